"""The deterministic build of the digits world's networks, from its data (worlds/digits/data.py).

Networks, each trained here from its own seed and versioned by the SHA-256 of its weights:
  denoiser: the epsilon-prediction base generator (TextConditionedDenoiser, sampled with DDIM);
  consistency: a consistency model distilled from the denoiser (sampled in 1 to 8 steps);
  flow: a rectified-flow (velocity) base generator trained by flow matching, as SD3 is;
  reward classifier (MLP) behind the `digit` reward; judge (CNN), for evaluation only;
  kernel judge (models/kernel_judge.py: a kernel machine on pixels), the second judge, for evaluation only.
Each network is a component built from a recipe (the config fields it depends on and the hashes
of the components it learns from); the build (`RECIPE.build`) trains only the components whose recipe changed,
so adding a generator to the world never retrains the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models import build
from models.build import Component, cosine_lr
from models.consistency import ConsistencyPolicy
from models.flow import FlowPolicy
from models.kernel_judge import KernelClassifier
from models.networks import CNNClassifier, MLPClassifier, TextConditionedDenoiser
from models.policy import ChainPolicy, DiffusionPolicy
from models.progress import progress
from models.text import TEXT_DIM, PromptEncoder
from worlds.digits.data import DIGIT_WORDS, IMAGE_SHAPE, digit_of, load_prompts, load_splits


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


def train_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: WorldConfig, generator: torch.Generator
) -> nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in progress(range(cfg.classifier_steps), desc=type(model).__name__):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.classifier_steps, 2e-3)
        idx = torch.randint(0, len(images), (128,), generator=generator)
        x = images[idx] + cfg.classifier_noise * torch.randn(images[idx].shape, generator=generator)
        loss = nn.functional.cross_entropy(model(x.clamp(0, 1)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def training_batch(images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator):
    """`size` train images, each with a random train prompt naming its digit: ((size, 1, 8, 8), prompts)."""
    by_digit = [[p for p in load_prompts()["train"] if digit_of(p) == d] for d in range(10)]
    idx = torch.randint(0, len(images), (size,), generator=generator)
    choice = torch.randint(0, len(by_digit[0]), (size,), generator=generator)
    return images[idx], [by_digit[int(labels[i])][int(c)] for i, c in zip(idx, choice)]


def _denoiser(cfg: WorldConfig) -> TextConditionedDenoiser:
    return TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, cfg.denoiser_width, cfg.denoiser_depth)


def _build_reward_classifier(cfg, splits, built, generator, log):
    return train_classifier(MLPClassifier(IMAGE_SHAPE), *splits["train"], cfg, generator)


def _build_judge(cfg, splits, built, generator, log):
    return train_classifier(CNNClassifier(IMAGE_SHAPE), *splits["judge"], cfg, generator)


def _build_kernel_judge(cfg, splits, built, generator, log):
    images, labels = splits["judge"]
    return KernelClassifier.fit(images, labels, len(DIGIT_WORDS))


def _train_batches(cfg: WorldConfig, splits) -> build.Batches:
    images, labels = splits["train"]
    return lambda generator: training_batch(images, labels, cfg.denoiser_batch, generator)


def _train_generator(policy_class: type[ChainPolicy], cfg: WorldConfig, splits, built, generator, log):
    """A base generator trained from scratch with its family's own loss on (train image, a random train prompt
    naming its digit) pairs: the EMA of its weights."""
    model, ema = _denoiser(cfg), _denoiser(cfg)
    ema.load_state_dict(model.state_dict())
    policy = policy_class(model, built.encoder)
    batches = _train_batches(cfg, splits)
    return build.train_generator(
        model, ema, policy, batches, cfg.denoiser_steps, cfg.denoiser_lr, cfg.ema_decay, generator, log
    )


def _build_denoiser(cfg, splits, built, generator, log):
    return _train_generator(DiffusionPolicy, cfg, splits, built, generator, log)


def _build_flow(cfg, splits, built, generator, log):
    return _train_generator(FlowPolicy, cfg, splits, built, generator, log)


def _build_consistency(cfg, splits, built, generator, log):
    teacher = DiffusionPolicy(built.network("denoiser"), built.encoder)
    batches = _train_batches(cfg, splits)
    return build.distill_consistency(
        teacher, batches, cfg.consistency_steps, cfg.consistency_lr, cfg.consistency_target_decay, generator, log
    )


_CLASSIFIER_FIELDS = ("classifier_steps", "classifier_noise")
_DENOISER_FIELDS = ("denoiser_width", "denoiser_depth", "denoiser_steps", "denoiser_batch", "denoiser_lr", "ema_decay")
# name -> (config fields, components it learns from, builder, constructor of its empty network), in build order
COMPONENTS = {
    "reward_classifier": Component(
        _CLASSIFIER_FIELDS, (), _build_reward_classifier, lambda cfg: MLPClassifier(IMAGE_SHAPE)
    ),
    "judge": Component(_CLASSIFIER_FIELDS, (), _build_judge, lambda cfg: CNNClassifier(IMAGE_SHAPE)),
    "kernel_judge": Component((), (), _build_kernel_judge, lambda cfg: KernelClassifier()),
    "denoiser": Component(_DENOISER_FIELDS, (), _build_denoiser, _denoiser),
    "consistency": Component(
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
    "flow": Component(_DENOISER_FIELDS, (), _build_flow, _denoiser),
}


# The world's generators, by the model name a run chooses: (component, policy class).
GENERATORS: dict[str, tuple[str, type[ChainPolicy]]] = {
    "diffusion": ("denoiser", DiffusionPolicy),
    "consistency": ("consistency", ConsistencyPolicy),
    "flow": ("flow", FlowPolicy),
}


def build_inputs(cfg: WorldConfig, cache: dict | None) -> build.BuildInputs:
    """The build's inputs (models/build.py), each classifier assessed by its accuracy on the test split."""
    splits = load_splits()
    encoder = PromptEncoder(cache)
    encoder([p for prompts in load_prompts().values() for p in prompts])

    def assess(name: str, network: nn.Module) -> dict:
        if name not in ("reward_classifier", "judge", "kernel_judge"):
            return {}
        test_images, test_labels = splits["test"]
        return {"test_accuracy": float((network(test_images).argmax(1) == test_labels).float().mean())}

    return build.BuildInputs(COMPONENTS, splits, encoder, assess)


RECIPE = build.WorldRecipe("digits", COMPONENTS, GENERATORS, build_inputs)
