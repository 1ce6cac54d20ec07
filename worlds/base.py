"""What the harness asks of a world, typed: bench/ talks to these two protocols and never asks which world it has.

A `WorldEntry` is a registered world before it is loaded: the generators and rewards it offers (so a suite is
checked before any weights load), how its cells may run, and how to build or check it. `load` gives the `World`:
its prompt splits, generators, evaluation and annotator, which the run loop, the rewards and the methods use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from models.policy import Policy

JUDGES_AGREE = "judges_agree"
"""The metric of a world with a second judge (WorldEntry.second_judge_metric): the share of images on which its two
judges give the same verdict."""
READER_ONLY = "reader_only"
"""The metric of a world with a second judge: the share of images the rewards' reader passes and both judges fail,
what a method that hacks the reader gains."""


class World(Protocol):
    """A loaded world."""

    name: str
    prompts: dict[str, list[str]]
    """Prompt split -> prompts: `train` (what methods train on) and the evaluation splits (EvalConfig.splits)."""
    metrics: dict[str, bool]
    """The evaluation's metric -> higher is better."""

    @property
    def learned_reward_model(self) -> type[nn.Module]:
        """The architecture a method that learns a reward from preferences uses here: a module class taking the image
        shape (C, H, W), scoring (images, prompts) (rewards/learned.py)."""
        ...

    def model_hash(self, model: str, source: str = "") -> str:
        """The identity of a generator's weights (those of `source` in its place, where the world takes one): the
        base model a run starts from."""
        ...

    def make_policy(self, model: str, source: str = "", *, full_finetune: bool = False) -> Policy:
        """A fresh, trainable copy of one of the world's generators (or of `source` in its place); `full_finetune`:
        every weight trains, where the generators otherwise train adapters (a sharded run: bench/parallel.py)."""
        ...

    def score_images(
        self, images: torch.Tensor, prompts: list[str], samples_per_prompt: int, reward
    ) -> dict[str, float]:
        """The metrics of one evaluation set of images (prompt-major: each prompt's images are consecutive)."""
        ...

    def sample_metrics(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """Metrics read from an evaluation set as the store keeps it (8-bit images, bench/evaluate.py:
        stored_images), so that a metric added later reads a run recorded before it exactly as a new run's
        evaluation does (`bench rescore`): each must be in `metrics`, and every set gets the same ones."""
        ...

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's demonstrations: the best `fraction` of the world's candidate images by the hidden
        `reward`, with their prompts (images (N, C, H, W) in [0, 1] on the CPU)."""
        ...


class WorldEntry(Protocol):
    """A registered world, known without loading it."""

    @property
    def models(self) -> dict[str, str]:
        """Generator name -> its family (diffusion, consistency or flow); the first of a family is its default."""
        ...

    @property
    def rewards(self) -> tuple[str, ...]:
        """The rewards (worlds.REWARDS) the world offers."""
        ...

    @property
    def image_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """The shapes (C, H, W) of the images its generators draw and its rewards score: all a reward server of the
        world accepts (rewards/server.py)."""
        ...

    @property
    def reward_classes(self) -> dict[str, type]:
        """The rewards the world defines itself (read from its own networks and prompt language), by name: beside the
        shared ones of rewards/, they make up worlds.REWARDS."""
        ...

    def generator_class(self, model: str) -> type:
        """The Policy class of a generator, known without loading it: what a method's step costs on it
        (`Trainer.step_usage`)."""
        ...

    @property
    def metrics(self) -> dict[str, bool]:
        """The evaluation's metric -> higher is better (those of the loaded World)."""
        ...

    @property
    def headline_metric(self) -> str:
        """The held-out measure of success that tables lead with."""
        ...

    @property
    def headline_label(self) -> str:
        """What the headline measures, for axis labels (e.g. "held-out judge")."""
        ...

    @property
    def second_judge_metric(self) -> str:
        """The headline as a second judge of another design reads it ("" where the world has none): the tables show
        it beside the headline with the panel's metrics (worlds/metrics.py) and flag a cell where the judges differ."""
        ...

    @property
    def cells_side_by_side(self) -> bool:
        """Whether a sweep may run several cells at once in worker processes (False where each loads a GPU's worth)."""
        ...

    def prompt_group(self, prompt: str) -> str:
        """The family a prompt of the world belongs to (scenes: GenEval's families and text rendering), "" where the
        world has none: the sample grids show every family."""
        ...

    @property
    def gpus_per_cell(self) -> float:
        """The GPUs a cell asks a Ray cluster for (bench/ray_backend.py): Ray reserves none for a task that asks for
        none."""
        ...

    @property
    def takes_sources(self) -> bool:
        """Whether `bench run --source MODEL=SOURCE` may replace a generator's checkpoint."""
        ...

    @property
    def shards(self) -> bool:
        """Whether `bench run --sharding fsdp2` may shard a full fine-tune of its generators over processes."""
        ...

    def ensure(self, name: str, root: Path, log) -> Path:
        """Builds whatever the world builds here and is missing or stale; returns its directory under `root`."""
        ...

    def prepare(self, name: str, root: Path, log, ship: bool = False, workers: int = 1) -> None:
        """`bench models`: builds the world from scratch and checks it against the weights the repository ships, or
        checks that every checkpoint it reads is there (failing, with a ValueError naming what differs or how to get
        what is missing). `ship`: replace the shipped weights with the rebuilt ones (a ValueError where the world
        ships none). `workers`: processes that build independent networks side by side."""
        ...

    def load(self, name: str, root: Path, log) -> World:
        """The world, ready to run cells (built first where it must be)."""
        ...
