"""`clip_score`: 100 * cos(CLIP image embedding, CLIP text embedding) (Hessel et al. 2021; differentiable).

Any transformers `CLIPModel` with its `CLIPTokenizer`; the default is OpenAI's ViT-L/14
(`openai/clip-vit-large-patch14`). Images go through CLIP's own preprocessing, in torch so gradients reach
the pixels (rewards.image_preprocess.clip_preprocess, at the model's `vision_config.image_size`); prompts are
cleaned as OpenAI CLIP's own tokenizer cleans them (`openai_clip_text`: Hessel et al. score with OpenAI's `clip`
package; transformers' tokenizers skip some of it) and tokenized to the model's context length (77), truncated.

CLIPScore as Hessel et al. define it is w * max(cos, 0) with w = 2.5, and torchmetrics' CLIPScore is
max(100 * cos, 0). The clamp at zero is left out here: a reward with a flat region gives no gradient there,
and the CLIP cosine of an image and a related caption is positive in practice, so the clamp rarely acts.

This module also holds the loading helpers the other reward models share (a transformers model or tokenizer from a
hub id or local path, resolved by models/hub.py: cache-only, clear errors, tokenizers checked for a real
vocabulary), since every one of them loads a transformers model and tokenizer the same way.

On disk (`from_pretrained(source)`): a hub id present in the local Hugging Face cache
(`huggingface-cli download openai/clip-vit-large-patch14`), or a directory holding what
`CLIPModel.save_pretrained` and `CLIPTokenizer.save_pretrained` write (config.json, model.safetensors,
vocab.json, merges.txt / tokenizer.json, ...). `tokenizer_source` defaults to `source`.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.hub import MIN_VOCAB, check_vocabulary, how_to_get, is_hub_id, one_line, resolve_directory
from rewards.image_preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_images, clip_preprocess

DEFAULT_SOURCE = "openai/clip-vit-large-patch14"


# ----------------------------------------------------------------------------------------------------------
# Loading helpers shared by the reward models
# ----------------------------------------------------------------------------------------------------------


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (dropout off) and no parameter gradients; gradients still flow through to the inputs."""
    return module.eval().requires_grad_(False)


def load_frozen(model_cls, source: str | Path, what: str, *, device=None, dtype=None) -> nn.Module:
    """`model_cls.from_pretrained` from a local directory or the local cache only, frozen, on device/dtype."""
    directory = resolve_directory(source, what)
    try:
        model = model_cls.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as error:
        hint = how_to_get(str(source)) if is_hub_id(source) else "pass a directory written by save_pretrained"
        raise ValueError(
            f"{what}: no loadable {model_cls.__name__} weights in {directory} ({one_line(error)[:300]}); {hint}"
        ) from error
    # Cast after loading: from_pretrained's dtype argument is `torch_dtype` in transformers 4 and `dtype` in 5.
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return freeze(model)


def load_tokenizer(tokenizer_cls, source: str | Path, what: str, *, min_vocab: int = MIN_VOCAB):
    """`tokenizer_cls.from_pretrained` from a local directory or the local cache only, refusing a vocabulary
    smaller than `min_vocab` (the silent offline failure; pass a smaller `min_vocab` for a deliberately tiny
    tokenizer, as the tests do)."""
    directory = resolve_directory(source, what)
    try:
        tokenizer = tokenizer_cls.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{what}: no loadable {tokenizer_cls.__name__} in {directory} ({one_line(error)[:300]})"
        ) from error
    return check_vocabulary(tokenizer, min_vocab, f"{directory} ({what})")


# ----------------------------------------------------------------------------------------------------------
# CLIP embeddings
# ----------------------------------------------------------------------------------------------------------


def check_batch(images: torch.Tensor, prompts) -> list[str]:
    """Validate a reward call's inputs: images (B, 3, H, W) floating, one prompt string per image."""
    check_images(images)
    prompts = list(prompts)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts: need one prompt per image")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings")
    return prompts


def check_clip_tokenizer(model: nn.Module, tokenizer) -> None:
    """Raise ValueError unless the tokenizer's ids fit the CLIP text tower.

    transformers' CLIP text tower pools at the first `eos_token_id` of its config (at the largest id when the
    config holds the legacy value 2, where end-of-text is the last vocabulary entry); a tokenizer with another
    end-of-text id would pool the wrong token without any error.
    """
    text_config = model.config.text_config
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the CLIP text tower only "
            f"{text_config.vocab_size} embeddings: tokenizer and weights do not belong together"
        )
    if text_config.eos_token_id != 2 and tokenizer.eos_token_id != text_config.eos_token_id:
        raise ValueError(
            f"the tokenizer's end-of-text id is {tokenizer.eos_token_id} but the CLIP text tower pools "
            f"at id {text_config.eos_token_id}: tokenizer and weights do not belong together"
        )


def pooled(output) -> torch.Tensor:
    """The embedding from `get_image_features` / `get_text_features`: a tensor in transformers 4, a
    `BaseModelOutputWithPooling` whose `pooler_output` holds the projected embedding in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    # The patch embedding, not next(parameters()) (CLIPModel's first parameter is the scalar logit_scale).
    weight = model.vision_model.embeddings.patch_embedding.weight
    return weight.device, weight.dtype


def clip_image_embeddings(
    model: nn.Module, images: torch.Tensor, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, preprocess=clip_preprocess
) -> torch.Tensor:
    """Unit-norm image embeddings (B, D) float32 of images (B, 3, H, W) in [0, 1]; differentiable. `preprocess`:
    rewards.image_preprocess's CLIP-style transform the reward's original uses."""
    device, dtype = _model_device_dtype(model)
    pixels = preprocess(images, model.config.vision_config.image_size, mean, std)
    features = pooled(model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype)))
    return F.normalize(features.float(), dim=-1)


def clip_text_embeddings(model: nn.Module, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Unit-norm text embeddings (B, D) float32 of B prompts, truncated to the model's context length."""
    device, _ = _model_device_dtype(model)
    tokens = tokenizer(
        prompts,
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    features = pooled(
        model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
    )
    return F.normalize(features.float(), dim=-1)


def clip_cosine(
    model: nn.Module, tokenizer, images: torch.Tensor, prompts: list[str], preprocess=clip_preprocess
) -> torch.Tensor:
    """cos(image_b, text_b) (B,) float32 for each image and its own prompt; differentiable in the images."""
    image_emb = clip_image_embeddings(model, images, preprocess=preprocess)
    text_emb = clip_text_embeddings(model, tokenizer, prompts)
    return (image_emb * text_emb).sum(-1)


def openai_clip_text(text: str) -> str:
    """A prompt as OpenAI CLIP's and open_clip's tokenizers clean it before their BPE (`basic_clean`, then
    `whitespace_clean`): ftfy's `fix_text` (mojibake, curly quotes, full-width letters, and HTML entities where the text
    holds no tag), HTML entities unescaped twice more, whitespace runs to one space, the ends stripped.
    transformers' CLIPTokenizer (the fast one in transformers 5) does none of it; it lower-cases, as they do."""
    import ftfy

    return re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()


def source_tag(source: str | Path) -> str:
    """A short name for the weights a reward was loaded from, for its version string."""
    return Path(str(source).rstrip("/")).name or str(source)


class ClipScoreReward:
    """100 * cos(image, prompt) under a CLIP model."""

    name = "clip_score"
    version = "2"  # 2: prompts cleaned as OpenAI CLIP's tokenizer cleans them
    differentiable = True
    higher_is_better = True

    def __init__(self, model: nn.Module, tokenizer, *, tag: str = source_tag(DEFAULT_SOURCE)):
        check_clip_tokenizer(model, tokenizer)
        self.model = freeze(model)
        self.tokenizer = tokenizer
        # The backbone is a free choice, so scores from two backbones must not share a version.
        self.version = f"{type(self).version}-{tag}"

    @classmethod
    def from_world(cls, world) -> ClipScoreReward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_SOURCE,
        *,
        tokenizer_source: str | Path | None = None,
        device=None,
        dtype=None,
        min_vocab: int = MIN_VOCAB,
    ) -> ClipScoreReward:
        from transformers import CLIPModel, CLIPTokenizer

        model = load_frozen(CLIPModel, source, "CLIP weights", device=device, dtype=dtype)
        tokenizer = load_tokenizer(CLIPTokenizer, tokenizer_source or source, "CLIP tokenizer", min_vocab=min_vocab)
        return cls(model, tokenizer, tag=source_tag(source))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        prompts = [openai_clip_text(prompt) for prompt in check_batch(images, prompts)]
        return (100.0 * clip_cosine(self.model, self.tokenizer, images, prompts)).to(images.device)
