"""`imagereward`: ImageReward (Xu et al. 2023, NeurIPS), differentiable, on transformers' BLIP classes.

The reference (THUDM/ImageReward, `ImageReward/ImageReward.py`) scores an image x and prompt c as

    v = BLIP ViT-L/16 visual encoder(preprocess(x))                          (B, 1 + 196, 1024)
    h = BLIP text encoder(tokens(c), cross-attending to v)[:, 0]          (B, 768), the [CLS] output
    score = (MLP(h) - 0.16717362830052426) / 1.0333394966054072

- Visual encoder: BLIP's ViT (`create_vit('large', 224)`): patch 16, width 1024, depth 24, 16 heads, MLP 4096,
  exact GELU, LayerNorm eps 1e-6, final LayerNorm on every token. Here: `BlipVisionModel` with
  `imagereward_vision_config()` (eps set to 1e-6: transformers' default 1e-5 is not BLIP's).
- Text encoder: BLIP's `med.BertModel` (BERT-base, vocab 30524 = bert-base-uncased + [DEC] + [ENC], 12 layers
  with cross-attention to the 1024-d image tokens, no pooler, no token-type embeddings, bidirectional
  self-attention), called in its default 'multimodal' mode with the plain [CLS]-first token ids (ImageReward
  does not swap in [ENC] as BLIP's ITM head does). Here: `BlipTextModel(add_pooling_layer=False)`, built with
  `is_decoder=True` so the cross-attention layers exist, called with `is_decoder=False` (bidirectional mask),
  as `BlipForImageTextRetrieval`'s ITM path does. The image tokens are never padded, so the all-ones cross-
  attention mask ImageReward passes changes nothing and is left out.
- Head: the LAION aesthetic predictor's MLP, 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with no nonlinearity
  (`rewards.aesthetic.ScoreMLP`), applied in float32 as the reference's `.float()` does.
- Tokens: bert-base-uncased plus [DEC] (bos) and [ENC] (BLIP's `init_tokenizer`), padded to and truncated at
  35 tokens. Pixels: ImageReward's `_transform(224)` = shorter side to 224 (bicubic), center crop 224, OpenAI
  CLIP mean/std (`rewards.image_preprocess.clip_preprocess`; BLIP itself would resize straight to a square).

Checkpoint key mapping (`imagereward_state_dicts`), from the published `ImageReward.pt` (the `state_dict()` of
ImageReward's `nn.Module`: `blip` = BLIP_Pretrain, `mlp` = MLP) to the three modules. Names were read from
THUDM/ImageReward (ImageReward.py, train/src/models/blip_pretrain.py, med.py, utils.py), salesforce/BLIP
(models/vit.py) and transformers' own BLIP conversion script (convert_blip_original_pytorch_to_hf.py, whose
`rename_key` does the same vision renames):

    blip.visual_encoder.cls_token                    -> vision.embeddings.class_embedding
    blip.visual_encoder.pos_embed                    -> vision.embeddings.position_embedding
    blip.visual_encoder.patch_embed.proj.{w,b}       -> vision.embeddings.patch_embedding.{w,b}
    blip.visual_encoder.blocks.N.norm1.{w,b}         -> vision.encoder.layers.N.layer_norm1.{w,b}
    blip.visual_encoder.blocks.N.attn.qkv.{w,b}      -> vision.encoder.layers.N.self_attn.qkv.{w,b}
    blip.visual_encoder.blocks.N.attn.proj.{w,b}     -> vision.encoder.layers.N.self_attn.projection.{w,b}
    blip.visual_encoder.blocks.N.norm2.{w,b}         -> vision.encoder.layers.N.layer_norm2.{w,b}
    blip.visual_encoder.blocks.N.mlp.fc{1,2}.{w,b}   -> vision.encoder.layers.N.mlp.fc{1,2}.{w,b}
    blip.visual_encoder.norm.{w,b}                   -> vision.post_layernorm.{w,b}
    blip.text_encoder.<rest>                         -> text.<rest>   (same BERT names: embeddings.word_embeddings,
                                                        embeddings.position_embeddings, embeddings.LayerNorm,
                                                        encoder.layer.N.{attention,crossattention}.{self.{query,
                                                        key,value},output.{dense,LayerNorm}}, encoder.layer.N.
                                                        {intermediate.dense,output.dense,output.LayerNorm})
    blip.text_encoder.embeddings.position_ids        -> dropped (a persistent arange buffer in BLIP's code)
    blip.vision_proj.*, blip.text_proj.*             -> dropped (BLIP's contrastive projections; unused by the score)
    mlp.layers.{0,2,4,6,7}.{w,b}                     -> head.layers.{0,2,4,6,7}.{w,b}

The fused qkv weight keeps BLIP's layout ((3 * width, width), rows q | k | v, heads contiguous within each), which
`BlipAttention` reshapes the same way. Any other key, or a shape that does not fit the configs, is a ValueError.

On disk: `source` is a hub id in the local Hugging Face cache holding `ImageReward.pt` (`huggingface-cli download
THUDM/ImageReward ImageReward.pt`), a directory holding `ImageReward.pt`, or the path of the .pt file itself;
`tokenizer_source` is bert-base-uncased (`huggingface-cli download bert-base-uncased`) or a directory with its
vocab.txt / tokenizer files. The architecture is fixed by ImageReward's code (its med_config.json is BLIP's
med_config), so it is not read from disk; `vision_config` / `text_config` override it (the tests use tiny ones).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from models.hub import MIN_VOCAB, resolve_file
from rewards.aesthetic import PUBLISHED_WIDTHS, ScoreMLP, head_state_dict
from rewards.clip_score import check_batch, freeze, load_tokenizer
from rewards.image_preprocess import BLIP_MEAN, BLIP_STD, clip_preprocess

DEFAULT_SOURCE = "THUDM/ImageReward"
CHECKPOINT_FILENAME = "ImageReward.pt"
DEFAULT_TOKENIZER = "bert-base-uncased"
MAX_LENGTH = 35
# ImageReward's fixed normalisation of the MLP output (`self.mean`, `self.std` in ImageReward.py).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072

_VISION_PREFIX = "blip.visual_encoder."
_TEXT_PREFIX = "blip.text_encoder."
_HEAD_PREFIX = "mlp."
_DROPPED = (
    re.compile(r"^blip\.(vision_proj|text_proj)\.(weight|bias)$"),
    re.compile(r"^blip\.text_encoder\.embeddings\.position_ids$"),
)
_VISION_RENAMES = (
    (re.compile(r"^cls_token$"), "embeddings.class_embedding"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embedding"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm1\.(weight|bias)$"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blocks\.(\d+)\.norm2\.(weight|bias)$"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$"), r"encoder.layers.\1.mlp.fc\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"post_layernorm.\1"),
)


def imagereward_vision_config():
    """BLIP ViT-L/16 at 224 px as ImageReward builds it (`create_vit('large', 224)`)."""
    from transformers import BlipVisionConfig

    return BlipVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
    )


def imagereward_text_config():
    """BLIP's med_config.json (BERT-base with cross-attention, vocab 30524) as a BlipTextConfig."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=30524,
        hidden_size=768,
        encoder_hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        is_decoder=True,
        use_cache=False,
    )


def _rename_vision(key: str) -> str | None:
    for pattern, replacement in _VISION_RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def imagereward_state_dicts(
    published: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Published ImageReward.pt state dict -> (BlipVisionModel, BlipTextModel, ScoreMLP) state dicts.

    The mapping is the table in the module docstring; an unknown key is a ValueError rather than a guess.
    """
    vision, text, unknown = {}, {}, []
    for key, value in published.items():
        if any(pattern.match(key) for pattern in _DROPPED) or key.startswith(_HEAD_PREFIX):
            continue
        if key.startswith(_VISION_PREFIX):
            renamed = _rename_vision(key[len(_VISION_PREFIX) :])
            if renamed is None:
                unknown.append(key)
            else:
                vision[renamed] = value
        elif key.startswith(_TEXT_PREFIX):
            text[key[len(_TEXT_PREFIX) :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"ImageReward checkpoint has {len(unknown)} keys with no counterpart in the BLIP/transformers "
            f"model (e.g. {unknown[:4]}): not the published ImageReward.pt layout"
        )
    if not vision or not text:
        raise ValueError(
            f"ImageReward checkpoint lacks the {'visual' if not vision else 'text'} encoder "
            f"(no '{_VISION_PREFIX if not vision else _TEXT_PREFIX}*' keys)"
        )
    return vision, text, head_state_dict(published, prefix=_HEAD_PREFIX)


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"ImageReward {what} weights do not fit the configured architecture: {' '.join(str(error).split())[:400]}"
        ) from error


class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attending BERT + MLP head: (pixels, token ids, mask) -> normalised ImageReward (B,)."""

    def __init__(self, vision_config=None, text_config=None, head: ScoreMLP | None = None):
        super().__init__()
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        vision_config = copy.deepcopy(vision_config or imagereward_vision_config())
        text_config = copy.deepcopy(text_config or imagereward_text_config())
        # The text encoder cross-attends to the vision tokens, so its key/value width is the vision width, and
        # transformers only builds the cross-attention layers for a decoder config (the forward pass still uses
        # a bidirectional mask).
        text_config.encoder_hidden_size = vision_config.hidden_size
        text_config.is_decoder = True
        head = head if head is not None else ScoreMLP(PUBLISHED_WIDTHS)
        if head.layers[0].in_features != text_config.hidden_size:
            raise ValueError(
                f"the head takes {head.layers[0].in_features}-d features but the text encoder is "
                f"{text_config.hidden_size}-d"
            )
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = head

    @classmethod
    def from_published(
        cls, published: Mapping[str, torch.Tensor], vision_config=None, text_config=None
    ) -> ImageRewardModel:
        """The model with the weights of a published-layout state dict (see `imagereward_state_dicts`), frozen."""
        vision_sd, text_sd, head_sd = imagereward_state_dicts(published)
        model = cls(vision_config, text_config, head=ScoreMLP.from_state_dict(head_sd))
        _load_strict(model.vision, vision_sd, "visual encoder")
        _load_strict(model.text, text_sd, "text encoder")
        return freeze(model)

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """pixel_values (B, 3, S, S) normalised, input_ids / attention_mask (B, L) -> scores (B,) float32."""
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state
        text_tokens = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens
        ).last_hidden_state
        raw = self.head(text_tokens[:, 0].float())
        return (raw - SCORE_MEAN) / SCORE_STD


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """The published state dict from an ImageReward.pt file (tensors only: weights_only=True)."""
    try:
        published = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types; all mean "not a plain state dict"
        raise ValueError(
            f"ImageReward checkpoint {path} is not a loadable state dict ({type(error).__name__})"
        ) from error
    if not isinstance(published, Mapping):
        raise ValueError(f"ImageReward checkpoint {path} holds a {type(published).__name__}, expected a state dict")
    return published


def imagereward_tokenizer(tokenizer):
    """BLIP's `init_tokenizer`: bert-base-uncased plus [DEC] as bos and [ENC] as an extra special token."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardReward:
    """ImageReward v1.0: a BLIP-based human-preference reward, normalised to mean 0 and std 1 on its data."""

    name = "imagereward"
    version = "1.0"
    differentiable = True
    higher_is_better = True

    def __init__(self, model: ImageRewardModel, tokenizer):
        if len(tokenizer) > model.text.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the text encoder only "
                f"{model.text.config.vocab_size} embeddings"
            )
        self.model = freeze(model)
        self.tokenizer = tokenizer

    @classmethod
    def from_world(cls, world) -> ImageRewardReward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_SOURCE,
        *,
        tokenizer_source: str | Path = DEFAULT_TOKENIZER,
        vision_config=None,
        text_config=None,
        device=None,
        dtype=None,
        min_vocab: int = MIN_VOCAB,
    ) -> ImageRewardReward:
        from transformers import BertTokenizer

        path = resolve_file(source, CHECKPOINT_FILENAME, "ImageReward weights")
        tokenizer = imagereward_tokenizer(
            load_tokenizer(
                BertTokenizer, tokenizer_source, "ImageReward tokenizer (bert-base-uncased)", min_vocab=min_vocab
            )
        )
        model = ImageRewardModel.from_published(load_checkpoint(path), vision_config, text_config)
        if dtype is not None:
            model.vision.to(dtype)
            model.text.to(dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        prompts = check_batch(images, prompts)
        parameter = next(self.model.vision.parameters())
        pixels = clip_preprocess(images, self.model.image_size, BLIP_MEAN, BLIP_STD)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        scores = self.model(
            pixels.to(device=parameter.device, dtype=parameter.dtype),
            tokens["input_ids"].to(parameter.device),
            tokens["attention_mask"].to(parameter.device),
        )
        return scores.float().to(images.device)
