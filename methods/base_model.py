"""`base`: the base model itself, untrained. Every leaderboard's reference row."""

from __future__ import annotations

from dataclasses import dataclass

from methods.options import Options
from methods.trainer import Trainer


@dataclass(frozen=True)
class Config(Options):
    """The base model has no options."""


class BaseModel(Trainer):
    name = "base"
    version = "1"
    Config = Config
    trains = False

    @classmethod
    def step_usage(cls, config, generator: type) -> dict[str, float]:
        return {}  # it never trains: its cost is the evaluation's generation, which the harness counts

    def step(self) -> dict[str, float]:
        raise RuntimeError("the base model does not train; the harness never steps it")
