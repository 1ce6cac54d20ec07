"""The embedded `digits` world: data, prompts, and the deterministic build of its three networks.

Data: scikit-learn's 1,797 8x8 handwritten digits, split once (stratified, fixed seed) into
  train (60%): the base generator and the reward classifier learn from it;
  judge (25%): only the judge learns from it, so it never shares the reward classifier's data;
  test  (15%): held out from everything; the reference set for FID and classifier accuracy.
Prompts: natural-language text naming one digit, one a line in prompts/digits/*.txt.
Networks, each trained here from a seed and versioned by the SHA-256 of its weights:
  denoiser: the epsilon-prediction base generator (TextConditionedDenoiser);
  reward classifier (MLP) behind the `digit` reward; judge (CNN), for evaluation only.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.io import atomic_torch_save, atomic_write_bytes
from models.networks import CNNClassifier, MLPClassifier, TextConditionedDenoiser
from models.policy import DiffusionPolicy
from models.text import TEXT_DIM, PromptEncoder

IMAGE_SHAPE = (1, 8, 8)
PROMPT_DIR = Path(__file__).resolve().parents[1] / "prompts" / "digits"
PROMPT_SETS = ("train", "eval_seen", "eval_unseen")
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


def load_prompts(name: str) -> list[str]:
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; valid: {', '.join(PROMPT_SETS)}")
    prompts = [line.strip() for line in (PROMPT_DIR / f"{name}.txt").read_text().splitlines() if line.strip()]
    for prompt in prompts:
        digit_of(prompt)
    return prompts


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


def weights_hash(module: nn.Module | dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes: the version of a set of weights."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class WorldConfig:
    """How the world's networks are trained. Changing any field changes the weights' hashes."""

    seed: int = 0
    """Seed of every random draw of the build."""
    denoiser_width: int = 384
    """Hidden width of the residual-MLP denoiser."""
    denoiser_depth: int = 4
    """Number of FiLM residual blocks."""
    denoiser_steps: int = 5000
    """Optimizer steps of the base generator's denoising loss."""
    denoiser_batch: int = 256
    """Images per denoiser step."""
    denoiser_lr: float = 1e-3
    """Peak AdamW learning rate (cosine decay to 0)."""
    ema_decay: float = 0.999
    """The saved base model is the exponential moving average of the weights."""
    classifier_steps: int = 3000
    """Optimizer steps of each classifier."""
    classifier_noise: float = 0.1
    """Std of the pixel noise added while training classifiers, so they stay sane off the data manifold."""


def tiny_world_config() -> WorldConfig:
    """A world that builds in seconds, for tests: the same code paths, untrained-quality models."""
    return WorldConfig(denoiser_width=64, denoiser_depth=2, denoiser_steps=60, denoiser_batch=64,
                       classifier_steps=60)


def _cosine_lr(step: int, total: int, peak: float) -> float:
    return peak * 0.5 * (1 + math.cos(math.pi * step / total))


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: WorldConfig,
                     generator: torch.Generator) -> nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in range(cfg.classifier_steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.classifier_steps, 2e-3)
        idx = torch.randint(0, len(images), (128,), generator=generator)
        x = images[idx] + cfg.classifier_noise * torch.randn(images[idx].shape, generator=generator)
        loss = nn.functional.cross_entropy(model(x.clamp(0, 1)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def train_denoiser(cfg: WorldConfig, encoder: PromptEncoder, images: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator, log=print) -> TextConditionedDenoiser:
    """Trains the base generator on (image, a random train prompt naming its digit) pairs."""
    prompts = load_prompts("train")
    by_digit = [[p for p in prompts if digit_of(p) == d] for d in range(10)]
    model = TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)
    ema = TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)
    ema.load_state_dict(model.state_dict())
    policy = DiffusionPolicy(model, encoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.denoiser_lr, weight_decay=0.0)
    start = time.monotonic()
    for step in range(cfg.denoiser_steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.denoiser_steps, cfg.denoiser_lr)
        idx = torch.randint(0, len(images), (cfg.denoiser_batch,), generator=generator)
        choice = torch.randint(0, len(by_digit[0]), (len(idx),), generator=generator)
        batch_prompts = [by_digit[int(labels[i])][int(c)] for i, c in zip(idx, choice)]
        loss = policy.loss(images[idx], batch_prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        if (step + 1) % 1000 == 0:
            log(f"  denoiser step {step + 1}/{cfg.denoiser_steps} loss {loss.item():.4f} "
                f"({time.monotonic() - start:.0f}s)")
    return ema.eval()


def build_world(out_dir: Path, cfg: WorldConfig = WorldConfig(), log=print) -> dict:
    """Trains every network of the world and writes them with a manifest of hashes. Deterministic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    splits = load_splits()
    encoder = PromptEncoder()
    encoder([p for name in PROMPT_SETS for p in load_prompts(name)])
    start = time.monotonic()

    log("training the reward classifier (MLP, train split)")
    reward_clf = train_classifier(MLPClassifier(IMAGE_SHAPE), *splits["train"], cfg, generator)
    log("training the judge (CNN, judge split)")
    judge = train_classifier(CNNClassifier(IMAGE_SHAPE), *splits["judge"], cfg, generator)
    log(f"training the base denoiser ({cfg.denoiser_steps} steps)")
    denoiser = train_denoiser(cfg, encoder, *splits["train"], generator, log=log)

    test_images, test_labels = splits["test"]
    accuracy = {name: float((clf(test_images).argmax(1) == test_labels).float().mean())
                for name, clf in (("reward_classifier", reward_clf), ("judge", judge))}
    networks = {"denoiser": denoiser, "reward_classifier": reward_clf, "judge": judge}
    for name, net in networks.items():
        atomic_torch_save(net.state_dict(), out_dir / f"{name}.pt")
    atomic_torch_save(encoder.cache, out_dir / "prompt_embeddings.pt")
    manifest = {
        "world": "digits",
        "config": asdict(cfg),
        "hashes": {name: weights_hash(net) for name, net in networks.items()},
        "test_accuracy": accuracy,
        "build_seconds": round(time.monotonic() - start, 1),
    }
    atomic_write_bytes(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
