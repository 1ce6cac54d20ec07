"""The digits world's data and prompt language.

Data: scikit-learn's 1,797 8x8 handwritten digits, split once (stratified, fixed seed) into
  train (60%): the base generator and the reward classifier learn from it;
  judge (25%): only the judge learns from it, so it never shares the reward classifier's data;
  test  (15%): held out from everything; the reference set for FID and classifier accuracy.
Prompts: natural-language text naming one digit, one a line in prompts/digits/*.txt.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from models.prompts import load_prompt_set

IMAGE_SHAPE = (1, 8, 8)
SPLITS = ("train", "judge", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TOKEN = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|[0-9])\b", re.IGNORECASE)


def digit_of(prompt: str) -> int:
    """The digit a prompt names ("a handwritten seven" -> 7). Exactly one digit must be named."""
    found = {m.lower() for m in _DIGIT_TOKEN.findall(prompt)}
    digits = {int(m) if m.isdigit() else DIGIT_WORDS.index(m) for m in found}
    if len(digits) != 1:
        raise ValueError(f"a digits-world prompt must name exactly one digit (a word or a numeral), got {prompt!r}")
    return digits.pop()


def load_prompts() -> dict[str, list[str]]:
    """split -> prompts: the set prompts/digits/ (models/prompts.py), each naming exactly one digit."""
    return load_prompt_set("digits", check=digit_of)


def load_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """split -> (images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64). Always the same split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.int64)
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=0.60, stratify=data.target, random_state=0)
    judge, test = train_test_split(rest, train_size=0.625, stratify=data.target[rest], random_state=0)
    return {name: (images[idx], labels[idx]) for name, idx in (("train", train), ("judge", judge), ("test", test))}
