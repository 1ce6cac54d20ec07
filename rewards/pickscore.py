"""`pickscore`: PickScore (Kirstain et al. 2023, "Pick-a-Pic"), differentiable.

A CLIP ViT-H/14 (the LAION `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` model) fine-tuned on Pick-a-Pic human
preferences, published as a transformers `CLIPModel` (`yuvalkirstain/PickScore_v1`); its processor and
tokenizer are the LAION model's. The reference scoring (the PickScore README) is

    score = logit_scale.exp() * cos(image embedding, text embedding)

with the processor's CLIP preprocessing (shorter side 224 bicubic, center crop, OpenAI mean/std), done here in
torch so gradients reach the pixels, and its tokenizer: `AutoProcessor` loads the fast CLIP tokenizer (transformers
5's `CLIPTokenizer`), which cleans no text (no ftfy, no HTML unescaping; it lower-cases and collapses whitespace), so
a prompt goes in as given. The scale is the checkpoint's own learned `logit_scale`, read from the
weights, never hard-coded (published PickScores of Stable Diffusion images are around 20-22).

On disk: `source` is a hub id in the local Hugging Face cache (`huggingface-cli download
yuvalkirstain/PickScore_v1`) or a `CLIPModel.save_pretrained` directory; `tokenizer_source` likewise
(`huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, only its tokenizer files are needed:
vocab.json, merges.txt or tokenizer.json, tokenizer_config.json, special_tokens_map.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.hub import MIN_VOCAB
from rewards.clip_score import check_batch, check_clip_tokenizer, clip_cosine, freeze, load_frozen, load_tokenizer

DEFAULT_SOURCE = "yuvalkirstain/PickScore_v1"
DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward:
    """logit_scale.exp() * cos(image, prompt) under the PickScore CLIP model."""

    name = "pickscore"
    version = "1"
    differentiable = True
    higher_is_better = True

    def __init__(self, model: nn.Module, tokenizer):
        check_clip_tokenizer(model, tokenizer)
        self.model = freeze(model)
        self.tokenizer = tokenizer

    @classmethod
    def from_world(cls, world) -> PickScoreReward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_SOURCE,
        *,
        tokenizer_source: str | Path = DEFAULT_TOKENIZER,
        device=None,
        dtype=None,
        min_vocab: int = MIN_VOCAB,
    ) -> PickScoreReward:
        from transformers import CLIPModel, CLIPTokenizer

        model = load_frozen(CLIPModel, source, "PickScore weights", device=device, dtype=dtype)
        tokenizer = load_tokenizer(
            CLIPTokenizer, tokenizer_source, "PickScore tokenizer (LAION CLIP ViT-H-14)", min_vocab=min_vocab
        )
        return cls(model, tokenizer)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        prompts = check_batch(images, prompts)
        cosine = clip_cosine(self.model, self.tokenizer, images, prompts)
        return (self.model.logit_scale.float().exp() * cosine).to(images.device)
