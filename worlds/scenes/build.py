"""The deterministic build of the scenes world's networks, from its data and prompts (worlds/scenes/data.py).

Networks, each trained here from its own seed and versioned by the SHA-256 of its weights (models/build.py):
  denoiser: the epsilon-prediction base generator (SlotTransformer: a small DiT whose tokens are the slots,
            reading the prompt's MiniLM token embeddings), sampled with DDIM;
  flow:     the same network trained by flow matching, as SD3 is, predicting the clean scene (JiT's data
            prediction) from which its velocity follows;
  reader:   the reward's scene reader (an MLP per slot: digit or empty, and colour), on the train split;
  judge:    the evaluation's scene reader (a CNN per slot), on the judge split, which the reader never sees;
  kernel_judge: the second judge (models/kernel_judge.py: ink, colour by channel, a kernel machine on the pixels
            for the digit), fitted in closed form on the judge split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from models import build
from models.build import Component, cosine_lr
from models.diffusion import NoiseSchedule, epsilon_from_data
from models.flow import FlowPolicy, velocity_from_data
from models.kernel_judge import KernelSlotJudge
from models.networks import SlotReader, SlotTransformer, cnn_slot_reader, mlp_slot_reader
from models.policy import ChainPolicy, DiffusionPolicy
from models.progress import progress
from models.text import TEXT_DIM, TokenEncoder
from worlds.digits.data import load_splits
from worlds.scenes.data import IMAGE_SHAPE, PATCH, compose, draw_index, load_prompts
from worlds.scenes.rules import COLOURS, EMPTY, parse


@dataclass(frozen=True)
class ScenesConfig:
    """How the world's networks are trained. Changing any field changes the weights' hashes."""

    seed: int = 0
    """Seed of every random draw of the build."""
    generator_width: int = 192
    """Token width of the slot transformer."""
    generator_depth: int = 4
    """Number of its blocks."""
    generator_steps: int = 6000
    """Optimizer steps of each base generator's own loss."""
    generator_batch: int = 192
    """Scenes per generator step."""
    generator_lr: float = 5e-4
    """Peak AdamW learning rate (cosine decay to 0); at 1,500 steps both half and twice it trained worse."""
    generator_clip: float = 1.0
    """The gradient's norm is clipped to this."""
    ema_decay: float = 0.995
    """The saved base model is the exponential moving average of the weights. Short: a longer average (0.999) of a
    network still learning fast was far worse than its last weights (held-out score 0.04 against 0.23 at 1,500
    steps); with the cosine decay the last few hundred steps barely move."""
    reader_steps: int = 3000
    """Optimizer steps of each scene reader."""
    reader_noise: float = 0.1
    """Std of the pixel noise added while training the readers, so they stay sane off the data manifold."""


def tiny_scenes_config() -> ScenesConfig:
    """A world that builds in seconds, for tests: the same code paths, untrained-quality models."""
    return ScenesConfig(generator_width=32, generator_depth=1, generator_steps=40, generator_batch=32, reader_steps=60)


@functools.cache
def _train_prompts_by_family() -> list[list[str]]:
    by_family: dict[str, list[str]] = {}
    for prompt in load_prompts()["train"]:
        by_family.setdefault(parse(prompt).family, []).append(prompt)
    return list(by_family.values())


def training_batch(
    images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """`size` train prompts (a family drawn uniformly, then one of its prompts) with a real scene composed for each
    from the split: ((size, 3, 16, 16), prompts)."""
    families = _train_prompts_by_family()
    prompts = []
    for _ in range(size):
        family = families[draw_index(len(families), generator)]
        prompts.append(family[draw_index(len(family), generator)])
    return compose(prompts, images, labels, generator), prompts


def reader_batch(
    images: torch.Tensor, labels: torch.Tensor, size: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`size` single slots for a reader: pixels (size, 3, 8, 8) in [0, 1] (a random digit of the split in a random
    colour, or empty one time in eleven, plus pixel noise), their digit class (EMPTY: empty) and colour."""
    pick = torch.randint(0, len(images), (size,), generator=generator)
    empty = torch.rand(size, generator=generator) < 1 / 11
    colour = torch.randint(0, len(COLOURS), (size,), generator=generator)
    digits = torch.where(empty, torch.full_like(pick, EMPTY), labels[pick])
    slots = torch.zeros(size, len(COLOURS), PATCH, PATCH)
    slots[torch.arange(size), colour] = images[pick, 0] * (~empty).float()[:, None, None]
    slots = (slots + noise * torch.randn(slots.shape, generator=generator)).clamp(0, 1)
    return slots, digits, colour


def train_reader(
    reader: SlotReader, images: torch.Tensor, labels: torch.Tensor, cfg: ScenesConfig, generator: torch.Generator
) -> SlotReader:
    """Cross-entropy on each slot's digit (or empty) and, where it holds one, its colour."""
    optimizer = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in progress(range(cfg.reader_steps), desc="reader"):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.reader_steps, 2e-3)
        slots, digits, colours = reader_batch(images, labels, 128, cfg.reader_noise, generator)
        features = reader.features_of_slots(slots)
        filled = digits != EMPTY
        loss = nn.functional.cross_entropy(reader.digit(features), digits) + nn.functional.cross_entropy(
            reader.colour(features[filled]), colours[filled]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return reader.eval().requires_grad_(False)


def _generator_network(cfg: ScenesConfig, policy_class: type[ChainPolicy]) -> SlotTransformer:
    """Both generators predict the clean scene, from which their family's output follows (flow.velocity_from_data,
    diffusion.epsilon_from_data): at 1,500 steps the flow generator's held-out score rose from 0.18 to 0.23
    (eval_seen 0.16 to 0.30) and the residual noise left its samples."""
    from_data = (
        velocity_from_data if policy_class is FlowPolicy else epsilon_from_data(NoiseSchedule().alphas_cumprod())
    )
    return SlotTransformer(IMAGE_SHAPE, TEXT_DIM, PATCH, cfg.generator_width, cfg.generator_depth, from_data=from_data)


def _train_generator(policy_class: type[ChainPolicy], cfg: ScenesConfig, splits, built, generator, log):
    """Flow matching for the flow generator; for the diffusion generator the v-prediction loss
    (DiffusionPolicy.velocity_loss), not the denoising loss, whose weight on the clean scene's error vanishes at the
    high noise where a scene's layout is decided: at 1,500 steps its held-out score was 0.04 under the denoising loss
    and 0.30 under this one."""
    model, ema = _generator_network(cfg, policy_class), _generator_network(cfg, policy_class)
    ema.load_state_dict(model.state_dict())
    policy = policy_class(model, built.encoder)
    images, labels = splits["train"]
    return build.train_generator(
        model,
        ema,
        policy,
        lambda g: training_batch(images, labels, cfg.generator_batch, g),
        cfg.generator_steps,
        cfg.generator_lr,
        cfg.ema_decay,
        generator,
        log,
        clip=cfg.generator_clip,
        loss=policy.velocity_loss if isinstance(policy, DiffusionPolicy) else None,
    )


def _build_reader(cfg, splits, built, generator, log):
    images, labels = splits["train"]
    return train_reader(mlp_slot_reader(len(COLOURS), PATCH), images, labels, cfg, generator)


def _build_judge(cfg, splits, built, generator, log):
    images, labels = splits["judge"]
    return train_reader(cnn_slot_reader(len(COLOURS), PATCH), images, labels, cfg, generator)


def _build_kernel_judge(cfg, splits, built, generator, log):
    images, labels = splits["judge"]
    return KernelSlotJudge.fit(images, labels, PATCH, EMPTY)


_READER_FIELDS = ("reader_steps", "reader_noise")
_GENERATOR_FIELDS = (
    "generator_width",
    "generator_depth",
    "generator_steps",
    "generator_batch",
    "generator_lr",
    "generator_clip",
    "ema_decay",
)
COMPONENTS = {
    "reader": Component(_READER_FIELDS, (), _build_reader, lambda cfg: mlp_slot_reader(len(COLOURS), PATCH)),
    "judge": Component(_READER_FIELDS, (), _build_judge, lambda cfg: cnn_slot_reader(len(COLOURS), PATCH)),
    "kernel_judge": Component((), (), _build_kernel_judge, lambda cfg: KernelSlotJudge(PATCH, EMPTY)),
    "denoiser": Component(
        _GENERATOR_FIELDS,
        (),
        lambda cfg, splits, built, g, log: _train_generator(DiffusionPolicy, cfg, splits, built, g, log),
        lambda cfg: _generator_network(cfg, DiffusionPolicy),
    ),
    "flow": Component(
        _GENERATOR_FIELDS,
        (),
        lambda cfg, splits, built, g, log: _train_generator(FlowPolicy, cfg, splits, built, g, log),
        lambda cfg: _generator_network(cfg, FlowPolicy),
    ),
}
# The world's generators, by the model name a run chooses: (component, policy class).
GENERATORS: dict[str, tuple[str, type[ChainPolicy]]] = {
    "scene-diffusion": ("denoiser", DiffusionPolicy),
    "scene-flow": ("flow", FlowPolicy),
}


def reader_accuracy(
    reader: SlotReader | KernelSlotJudge, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """A scene reader's accuracy on slots of a split (every image once, in its colour by index, plus as many empty),
    each slot read as a scene of one slot."""
    generator = torch.Generator().manual_seed(0)
    slots, digits, colours = reader_batch(images, labels, 4 * len(images), 0.0, generator)
    read = torch.tensor(reader.read(slots))[:, 0]  # (N, 2): digit, colour
    filled = digits != EMPTY
    digit_acc = (read[:, 0] == digits).float().mean()
    colour_acc = (read[filled, 1] == colours[filled]).float().mean()
    return {"test_digit_accuracy": float(digit_acc), "test_colour_accuracy": float(colour_acc)}


def build_inputs(cfg: ScenesConfig, cache: dict | None) -> build.BuildInputs:
    """The build's inputs (models/build.py), each reader assessed by its accuracy on the test split."""
    splits = load_splits()
    encoder = TokenEncoder(cache)
    encoder([p for prompts in load_prompts().values() for p in prompts])

    def assess(name: str, network: nn.Module) -> dict:
        return reader_accuracy(network, *splits["test"]) if isinstance(network, SlotReader | KernelSlotJudge) else {}

    return build.BuildInputs(COMPONENTS, splits, encoder, assess)


RECIPE = build.WorldRecipe("scenes", COMPONENTS, GENERATORS, build_inputs, threads=1)
