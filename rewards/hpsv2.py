"""`hpsv2`: Human Preference Score v2 (Wu et al. 2023), differentiable, on transformers' `CLIPModel`.

HPSv2 is open_clip's ViT-H-14 (initialised from laion2B-s32B-b79K) fine-tuned on HPD v2 preferences,
published as open_clip state dicts (`xswu/HPSv2` on the hub: `HPS_v2_compressed.pt` for v2.0,
`HPS_v2.1_compressed.pt` for v2.1, each `{"state_dict": {...}}`). The reference scorer (tgxs002/HPSv2,
`hpsv2/img_score.py`) computes, with open_clip's `output_dict=True` forward (features L2-normalised),

    score = image_features @ text_features.T  (diagonal)  =  cos(image embedding, text embedding)

so this reward returns the cosine itself (typically 0.2-0.35), not 100x it; the HPS v2 benchmark tables print
the same numbers multiplied by 100. Images are preprocessed as the scorer's `preprocess_val`, which it builds with
`light_augmentation=True`: open_clip's `ResizeMaxSize(224)`, the longer side resized to 224 (bicubic, on the float
tensor, unclamped) and the image padded with black to a square, then the OpenAI CLIP mean/std
(rewards.image_preprocess.hpsv2_preprocess, in torch so gradients reach the pixels). Prompts are cleaned as
open_clip's tokenizer cleans them (ftfy, HTML entities unescaped, whitespace collapsed:
rewards.clip_score.openai_clip_text) and tokenized by the LAION ViT-H-14 CLIP tokenizer (the same BPE as
open_clip's) to 77 tokens.

Architecture (`vit_h_14_config`): open_clip's ViT-H-14 config, vision width 1280, 32 layers, 16 heads (head
width 80), patch 14, 224 px, MLP 5120; text width 1024, 24 layers, 16 heads, context 77, vocab 49408, MLP 4096;
embedding 1024; exact GELU (HPSv2 creates it with force_quick_gelu=False); LayerNorm eps 1e-5. Head counts
cannot be read from a state dict, so the config is given, not inferred; `config=` overrides it.

Checkpoint key mapping (`open_clip_to_transformers`), open_clip name -> transformers `CLIPModel` name. Read
from transformers' `convert_clip_original_pytorch_to_hf.py` (OpenAI CLIP, whose module names open_clip keeps)
and the open_clip key names listed by HPSv2's loader:

    token_embedding.weight                 -> text_model.embeddings.token_embedding.weight
    positional_embedding      (77, Wt)     -> text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.*              -> text_model.encoder.layers.N.*            (block table below)
    ln_final.{w,b}                         -> text_model.final_layer_norm.{w,b}
    text_projection           (Wt, D)      -> text_projection.weight (D, Wt)  = transpose
    visual.conv1.weight                    -> vision_model.embeddings.patch_embedding.weight (no bias in both)
    visual.class_embedding    (Wv,)        -> vision_model.embeddings.class_embedding
    visual.positional_embedding (1+P, Wv)  -> vision_model.embeddings.position_embedding.weight
    visual.ln_pre.{w,b}                    -> vision_model.pre_layrnorm.{w,b}  (sic, transformers' spelling)
    visual.transformer.resblocks.N.*       -> vision_model.encoder.layers.N.*
    visual.ln_post.{w,b}                   -> vision_model.post_layernorm.{w,b}
    visual.proj               (Wv, D)      -> visual_projection.weight (D, Wv) = transpose
    logit_scale                            -> logit_scale   (unused by the score)
    attn_mask                              -> dropped (the causal mask buffer; CLIPModel builds its own)
  block (both towers):
    ln_1.{w,b} -> layer_norm1.{w,b};  ln_2.{w,b} -> layer_norm2.{w,b}
    attn.in_proj_weight (3W, W) -> self_attn.{q,k,v}_proj.weight: rows [0:W], [W:2W], [2W:3W]
    attn.in_proj_bias   (3W,)   -> self_attn.{q,k,v}_proj.bias, split the same way
    attn.out_proj.{w,b} -> self_attn.out_proj.{w,b}
    mlp.c_fc.{w,b} -> mlp.fc1.{w,b};  mlp.c_proj.{w,b} -> mlp.fc2.{w,b}

Exactness: with these weights `CLIPModel` computes what open_clip computes for ViT-H-14: same pre-norm blocks,
class-token pooling with ln_post (open_clip normalises all tokens then pools, transformers pools then
normalises; LayerNorm is per token, so equal), and text pooling at the end-of-text token (open_clip takes the
argmax token id, which is end-of-text; transformers takes the first eos id; the text tower is causal, so what
follows it never matters). open_clip features that `CLIPModel` has no counterpart for (LayerScale `ls_1/ls_2`,
attentional pooling `attn_pool`, extra norms `ln_attn` / `mlp.ln`, timm or HF text towers `visual.trunk` /
`text.*`) are not guessed at: any key outside the table raises ValueError naming it.

On disk: `source` is a hub id in the local Hugging Face cache (`huggingface-cli download xswu/HPSv2
HPS_v2.1_compressed.pt`), a directory holding the file for `hps_version`, or the path of a checkpoint file;
`tokenizer_source` is `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (its tokenizer files suffice) or a directory with
CLIP tokenizer files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from models.hub import MIN_VOCAB, is_hub_id, resolve_file
from rewards.clip_score import (
    check_batch,
    check_clip_tokenizer,
    clip_cosine,
    freeze,
    load_tokenizer,
    openai_clip_text,
)
from rewards.image_preprocess import hpsv2_preprocess

DEFAULT_SOURCE = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
DEFAULT_VERSION = "v2.1"
DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_DROPPED = {"attn_mask", "visual.attn_mask"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_IN_PROJ = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}


def vit_h_14_config():
    """open_clip's ViT-H-14 (as HPSv2 builds it) as a transformers CLIPConfig."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=1024,
    )


def open_clip_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> transformers CLIPModel state dict (the table in the module docstring).

    Raises ValueError for keys with no exact CLIPModel counterpart instead of dropping them.
    """
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        if key in _DROPPED:
            continue
        if key in _TOP_LEVEL:
            mapped[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            if value.ndim != 2:
                raise ValueError(f"{key} should be a (width, embed_dim) matrix, got shape {tuple(value.shape)}")
            mapped[_TRANSPOSED[key]] = value.t().contiguous()
        elif (match := _BLOCK.match(key)) is not None:
            tower = "vision_model" if match.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{match.group(2)}."
            rest = match.group(3)
            if rest in _BLOCK_RENAMES:
                mapped[prefix + _BLOCK_RENAMES[rest]] = value
            elif rest in _IN_PROJ:
                if value.shape[0] % 3:
                    raise ValueError(f"{key} has {value.shape[0]} rows, not 3 x width (q, k, v stacked)")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    mapped[f"{prefix}self_attn.{name}.{_IN_PROJ[rest]}"] = part.contiguous()
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} open_clip keys cannot be mapped onto transformers' CLIPModel exactly "
            f"(e.g. {unknown[:4]}): only plain open_clip ViTs (no LayerScale, attentional pooling, "
            f"extra norms or timm/HF towers) are supported"
        )
    return mapped


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """The open_clip state dict of an HPSv2 checkpoint file (`{"state_dict": ...}`; tensors only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types; all mean "not a plain checkpoint"
        raise ValueError(
            f"HPSv2 checkpoint {path} is not loadable with weights_only=True ({type(error).__name__})"
        ) from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"HPSv2 checkpoint {path} has no 'state_dict' entry (expected {{'state_dict': {{...}}}})")
    return checkpoint["state_dict"]


def clip_from_open_clip(state_dict: Mapping[str, torch.Tensor], config=None) -> nn.Module:
    """A frozen transformers CLIPModel holding the weights of an open_clip state dict."""
    from transformers import CLIPModel

    model = CLIPModel(config if config is not None else vit_h_14_config())
    try:
        model.load_state_dict(open_clip_to_transformers(state_dict), strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"open_clip weights do not fit the CLIP config: {' '.join(str(error).split())[:400]}"
        ) from error
    return freeze(model)


class HPSv2Reward:
    """cos(image, prompt) under the HPSv2 CLIP model."""

    name = "hpsv2"
    version = "2"  # 2: the original's preprocessing (longer side resized, padded) and text cleaning
    differentiable = True
    higher_is_better = True

    def __init__(self, model: nn.Module, tokenizer, *, tag: str = DEFAULT_VERSION):
        check_clip_tokenizer(model, tokenizer)
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.version = f"{type(self).version}-{tag}"

    @classmethod
    def from_world(cls, world) -> HPSv2Reward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_SOURCE,
        *,
        hps_version: str = DEFAULT_VERSION,
        tokenizer_source: str | Path = DEFAULT_TOKENIZER,
        config=None,
        device=None,
        dtype=None,
        min_vocab: int = MIN_VOCAB,
    ) -> HPSv2Reward:
        from transformers import CLIPTokenizer

        if hps_version not in CHECKPOINTS:
            raise ValueError(f"unknown hps_version {hps_version!r}; valid: {sorted(CHECKPOINTS)}")
        path = resolve_file(source, CHECKPOINTS[hps_version], f"HPSv2 {hps_version} weights")
        tokenizer = load_tokenizer(
            CLIPTokenizer, tokenizer_source, "HPSv2 tokenizer (LAION CLIP ViT-H-14)", min_vocab=min_vocab
        )
        model = clip_from_open_clip(load_checkpoint(path), config)
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        # A checkpoint file given directly may be any fine-tune: label scores by its name, not by hps_version.
        passed_file = not is_hub_id(source) and Path(source).expanduser().is_file()
        return cls(model, tokenizer, tag=Path(source).stem if passed_file else hps_version)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        prompts = [openai_clip_text(prompt) for prompt in check_batch(images, prompts)]
        return clip_cosine(self.model, self.tokenizer, images, prompts, hpsv2_preprocess).to(images.device)
