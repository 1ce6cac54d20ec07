"""The embedded `digits` world: data, prompts, and the deterministic build of its networks.

Data: scikit-learn's 1,797 8x8 handwritten digits, split once (stratified, fixed seed) into
  train (60%): the base generator and the reward classifier learn from it;
  judge (25%): only the judge learns from it, so it never shares the reward classifier's data;
  test  (15%): held out from everything; the reference set for FID and classifier accuracy.
Prompts: natural-language text naming one digit, one a line in prompts/digits/*.txt.
Networks, each trained here from its own seed and versioned by the SHA-256 of its weights:
  denoiser: the epsilon-prediction base generator (TextConditionedDenoiser, sampled with DDIM);
  consistency: a consistency model distilled from the denoiser (sampled in 1 to 8 steps);
  flow: a rectified-flow (velocity) base generator trained by flow matching, as SD3 is;
  reward classifier (MLP) behind the `digit` reward; judge (CNN), for evaluation only.
Each network is a component built from a recipe (the config fields it depends on and the hashes
of the components it learns from); `build_world` rebuilds only the components whose recipe changed,
so adding a generator to the world never retrains the others.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.consistency import ConsistencyPolicy, distillation_grid
from models.diffusion import add_noise
from models.flow import FlowPolicy
from models.io import atomic_torch_save, atomic_write_bytes
from models.networks import CNNClassifier, MLPClassifier, TextConditionedDenoiser
from models.policy import ChainPolicy, DiffusionPolicy, images_to_model_space
from models.progress import progress
from models.shipped import CACHE, install, shipped_manifest, weights_hash
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
    consistency_steps: int = 3000
    """Optimizer steps of consistency distillation from the denoiser."""
    consistency_lr: float = 2e-4
    """Peak AdamW learning rate of distillation (cosine decay to 0)."""
    consistency_target_decay: float = 0.95
    """EMA decay of the target network that provides distillation targets (LCM's value); it is saved."""


def tiny_world_config() -> WorldConfig:
    """A world that builds in seconds, for tests: the same code paths, untrained-quality models."""
    return WorldConfig(
        denoiser_width=64,
        denoiser_depth=2,
        denoiser_steps=60,
        denoiser_batch=64,
        classifier_steps=60,
        consistency_steps=30,
    )


def _cosine_lr(step: int, total: int, peak: float) -> float:
    return peak * 0.5 * (1 + math.cos(math.pi * step / total))


def train_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: WorldConfig, generator: torch.Generator
) -> nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in progress(range(cfg.classifier_steps), desc=type(model).__name__):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.classifier_steps, 2e-3)
        idx = torch.randint(0, len(images), (128,), generator=generator)
        x = images[idx] + cfg.classifier_noise * torch.randn(images[idx].shape, generator=generator)
        loss = nn.functional.cross_entropy(model(x.clamp(0, 1)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def training_batch(images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator):
    """`size` train images, each with a random train prompt naming its digit: ((size, 1, 8, 8), prompts)."""
    by_digit = [[p for p in load_prompts("train") if digit_of(p) == d] for d in range(10)]
    idx = torch.randint(0, len(images), (size,), generator=generator)
    choice = torch.randint(0, len(by_digit[0]), (size,), generator=generator)
    return images[idx], [by_digit[int(labels[i])][int(c)] for i, c in zip(idx, choice)]


def train_generator(
    cfg: WorldConfig,
    policy_class: type,
    encoder: PromptEncoder,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    log=print,
) -> TextConditionedDenoiser:
    """Trains a base generator from scratch with its family's own loss (the denoising loss, flow matching)
    on (image, a random train prompt naming its digit) pairs; returns the EMA of its weights."""
    model = TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)
    ema = TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)
    ema.load_state_dict(model.state_dict())
    policy = policy_class(model, encoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.denoiser_lr, weight_decay=0.0)
    start = time.monotonic()
    for step in progress(range(cfg.denoiser_steps), desc=policy.family):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.denoiser_steps, cfg.denoiser_lr)
        batch_images, batch_prompts = training_batch(images, labels, cfg.denoiser_batch, generator)
        loss = policy.loss(batch_images, batch_prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        if (step + 1) % 1000 == 0:
            log(
                f"  {policy.family} step {step + 1}/{cfg.denoiser_steps} loss {loss.item():.4f} "
                f"({time.monotonic() - start:.0f}s)"
            )
    return ema.eval()


def distillation_loss(
    student: ConsistencyPolicy,
    teacher: DiffusionPolicy,
    target: nn.Module,
    images: torch.Tensor,
    prompts: list[str],
    generator: torch.Generator,
) -> torch.Tensor:
    """Consistency distillation (LCM's, without guidance): on adjacent grid timesteps t_n > t_{n-1},
    E ||f_student(x_{t_n}, t_n) - f_target(x_hat_{t_{n-1}}, t_{n-1})||^2, where x_hat is one DDIM (ODE)
    step of the teacher from x_{t_n} and f_target is the slow (EMA) copy of the student. A scalar."""
    x0 = images_to_model_space(images)
    grid = distillation_grid(student.schedule.num_train_timesteps)
    n = torch.randint(1, len(grid), (len(x0),), generator=generator)
    t_high, t_low = grid[n], grid[n - 1]
    a_high = student.alphas_cumprod[t_high].float().view(-1, 1, 1, 1)
    a_low = student.alphas_cumprod[t_low].float().view(-1, 1, 1, 1)
    text = student.encoder(prompts)
    x_high = add_noise(x0, torch.randn(x0.shape, generator=generator), student.alphas_cumprod[t_high])
    with torch.no_grad():
        eps = teacher.network(x_high, t_high, text)
        x0_teacher = (x_high - (1 - a_high).sqrt() * eps) / a_high.sqrt()
        x_low = a_low.sqrt() * x0_teacher + (1 - a_low).sqrt() * eps
        goal = student.predict_x0(x_low, t_low, text, network=target)
    return ((student.predict_x0(x_high, t_high, text) - goal) ** 2).mean()


def distill_consistency(
    cfg: WorldConfig,
    teacher: DiffusionPolicy,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    log=print,
) -> nn.Module:
    """Distils a consistency model from the base denoiser (initialised from it); returns the target network."""
    student = ConsistencyPolicy(copy.deepcopy(teacher.network).train().requires_grad_(True), teacher.encoder)
    target = copy.deepcopy(student.network).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.network.parameters(), lr=cfg.consistency_lr, weight_decay=0.0)
    start = time.monotonic()
    for step in progress(range(cfg.consistency_steps), desc="consistency"):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.consistency_steps, cfg.consistency_lr)
        batch_images, batch_prompts = training_batch(images, labels, cfg.denoiser_batch, generator)
        loss = distillation_loss(student, teacher, target, batch_images, batch_prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), student.network.parameters()):
                p_target.lerp_(p, 1 - cfg.consistency_target_decay)
        if (step + 1) % 1000 == 0:
            log(
                f"  consistency step {step + 1}/{cfg.consistency_steps} loss {loss.item():.5f} "
                f"({time.monotonic() - start:.0f}s)"
            )
    return target.eval()


def _denoiser(cfg: WorldConfig) -> TextConditionedDenoiser:
    return TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)


def _build_reward_classifier(cfg, splits, built, generator, log):
    return train_classifier(MLPClassifier(IMAGE_SHAPE), *splits["train"], cfg, generator)


def _build_judge(cfg, splits, built, generator, log):
    return train_classifier(CNNClassifier(IMAGE_SHAPE), *splits["judge"], cfg, generator)


def _build_denoiser(cfg, splits, built, generator, log):
    return train_generator(cfg, DiffusionPolicy, built.encoder, *splits["train"], generator, log=log)


def _build_flow(cfg, splits, built, generator, log):
    return train_generator(cfg, FlowPolicy, built.encoder, *splits["train"], generator, log=log)


def _build_consistency(cfg, splits, built, generator, log):
    teacher = DiffusionPolicy(built.network("denoiser"), built.encoder)
    return distill_consistency(cfg, teacher, *splits["train"], generator, log=log)


_CLASSIFIER_FIELDS = ("classifier_steps", "classifier_noise")
_DENOISER_FIELDS = ("denoiser_width", "denoiser_depth", "denoiser_steps", "denoiser_batch", "denoiser_lr", "ema_decay")
# name -> (config fields, components it learns from, builder, constructor of its empty network), in build order
COMPONENTS = {
    "reward_classifier": (_CLASSIFIER_FIELDS, (), _build_reward_classifier, lambda cfg: MLPClassifier(IMAGE_SHAPE)),
    "judge": (_CLASSIFIER_FIELDS, (), _build_judge, lambda cfg: CNNClassifier(IMAGE_SHAPE)),
    "denoiser": (_DENOISER_FIELDS, (), _build_denoiser, _denoiser),
    "consistency": (
        (
            "denoiser_width",
            "denoiser_depth",
            "denoiser_batch",
            "consistency_steps",
            "consistency_lr",
            "consistency_target_decay",
        ),
        ("denoiser",),
        _build_consistency,
        _denoiser,
    ),
    "flow": (_DENOISER_FIELDS, (), _build_flow, _denoiser),
}


# The world's generators, by the model name a run chooses: (component, policy class).
GENERATORS: dict[str, tuple[str, type[ChainPolicy]]] = {
    "diffusion": ("denoiser", DiffusionPolicy),
    "consistency": ("consistency", ConsistencyPolicy),
    "flow": ("flow", FlowPolicy),
}


class _Built:
    """The components already available to a build, loaded lazily from the world directory."""

    def __init__(self, directory: Path, cfg: WorldConfig, encoder: PromptEncoder):
        self.directory, self.cfg, self.encoder = directory, cfg, encoder

    def network(self, name: str) -> nn.Module:
        network = COMPONENTS[name][3](self.cfg)
        network.load_state_dict(torch.load(self.directory / f"{name}.pt", map_location="cpu", weights_only=True))
        return network.eval().requires_grad_(False)


def recipe(name: str, cfg: WorldConfig, hashes: dict[str, str]) -> dict:
    """What determines a component's weights: its config fields, the seed, and its inputs' hashes."""
    fields, inputs, _, _ = COMPONENTS[name]
    return {"seed": cfg.seed, **{f: getattr(cfg, f) for f in fields}, **{f"{i}_hash": hashes[i] for i in inputs}}


def read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    return manifest if "components" in manifest else {"world": "digits", "components": {}}


def stale_components(directory: Path, cfg: WorldConfig) -> list[str]:
    """The components whose recorded recipe differs from `cfg`'s (or that are missing), in build order."""
    built = read_manifest(directory)["components"]
    hashes, stale = {}, []
    for name in COMPONENTS:
        entry = built.get(name)
        fresh = (
            entry is not None
            and (directory / f"{name}.pt").exists()
            and not any(i in stale for i in COMPONENTS[name][1])
            and entry["recipe"] == recipe(name, cfg, hashes)
        )
        if fresh:
            hashes[name] = entry["hash"]
        else:
            stale.append(name)
    return stale


def install_shipped(directory: Path, cfg: WorldConfig, world: str) -> list[str]:
    """Installs into `directory` the shipped networks of `world` (models/shipped.py) of every stale component whose
    shipped recipe is `cfg`'s, checking each against its hash; returns their names (none where nothing ships)."""
    shipped = shipped_manifest(world)
    stale = stale_components(directory, cfg)
    if not stale or not shipped["components"]:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    manifest, installed = read_manifest(directory), []
    for name in stale:  # in build order: a component's inputs are settled before its recipe is compared
        hashes = {n: e["hash"] for n, e in manifest["components"].items() if n not in stale or n in installed}
        entry = shipped["components"].get(name)
        inputs_known = all(i in hashes for i in COMPONENTS[name][1])
        if entry is None or not inputs_known or entry["recipe"] != recipe(name, cfg, hashes):
            continue
        install(world, name, directory, entry["hash"])
        manifest["components"][name] = entry
        atomic_write_bytes(directory / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        installed.append(name)
    if installed and not (directory / f"{CACHE}.pt").exists():
        install(world, CACHE, directory, shipped["cache_hash"])
    return installed


def build_world(out_dir: Path, cfg: WorldConfig = WorldConfig(), log=print) -> dict:
    """Trains every stale component of the world and records it in the manifest. Deterministic: each
    component draws from its own seed, so building it alone or with the others gives the same weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits()
    encoder = PromptEncoder()
    encoder([p for name in PROMPT_SETS for p in load_prompts(name)])
    atomic_torch_save(encoder.cache, out_dir / f"{CACHE}.pt")
    manifest = read_manifest(out_dir)
    built = _Built(out_dir, cfg, encoder)
    for name in stale_components(out_dir, cfg):
        hashes = {n: e["hash"] for n, e in manifest["components"].items()}
        seed = (cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
        torch.manual_seed(seed)  # network initialisation draws from the global generator
        log(f"building {name}")
        start = time.monotonic()
        network = COMPONENTS[name][2](cfg, splits, built, torch.Generator().manual_seed(seed), log)
        atomic_torch_save(network.state_dict(), out_dir / f"{name}.pt")
        entry = {
            "recipe": recipe(name, cfg, hashes),
            "hash": weights_hash(network),
            "build_seconds": round(time.monotonic() - start, 1),
        }
        if name in ("reward_classifier", "judge"):
            test_images, test_labels = splits["test"]
            entry["test_accuracy"] = float((network(test_images).argmax(1) == test_labels).float().mean())
        manifest["components"][name] = entry
        # recorded after each component, so an interrupted build keeps what it finished
        atomic_write_bytes(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
