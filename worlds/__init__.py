"""Worlds by name, built on first use into `artifacts/<world>/` (or, at scale, read from the model cache).

A world offers generators (by model name, each of a family), rewards, prompts and its evaluation (worlds/base.py):
  digits, digits-tiny  the embedded world of 8x8 digits (worlds/digits/: its data, prompt language, build, rewards);
  scenes, scenes-tiny  the embedded compositional world: scenes of coloured digits, prompts in GenEval's families
                       and text rendering (worlds/scenes/, as the digits world);
  scale, scale-tiny    Stable Diffusion 1.5, LCM, SD3, SD3.5 and FLUX through diffusers with the published reward
                       models, and their tiny CPU-sized twin (worlds/scale/).
Model names are unique across worlds, so an entry `method@model` names its world's kind too. An installed package adds
its own through the entry-point group `rlhf_bench.worlds` (models/installed.py).
"""

from __future__ import annotations

from pathlib import Path

from models.installed import installed_entries
from rewards import REWARDS as SHARED_REWARDS
from rewards.base import Reward
from worlds.base import World, WorldEntry
from worlds.digits import DigitsEntry
from worlds.digits.build import WorldConfig, tiny_world_config
from worlds.scale import SCALE, SCALE_TINY, ScaleEntry
from worlds.scenes import ScenesEntry
from worlds.scenes.build import ScenesConfig, tiny_scenes_config

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORLDS: dict[str, WorldEntry] = {
    "digits": DigitsEntry(WorldConfig()),
    # The same world with barely trained networks: for tests and smoke runs, never for results.
    "digits-tiny": DigitsEntry(tiny_world_config()),
    "scenes": ScenesEntry(ScenesConfig()),
    "scenes-tiny": ScenesEntry(tiny_scenes_config()),
    "scale": ScaleEntry(SCALE),
    "scale-tiny": ScaleEntry(SCALE_TINY),
}
WORLDS.update(
    installed_entries(
        "rlhf_bench.worlds",
        WORLDS,
        "a WorldEntry (worlds/base.py: models, rewards, reward_classes, generator_class, ensure, prepare, load)",
        lambda entry: all(
            hasattr(entry, a)
            for a in ("models", "rewards", "reward_classes", "generator_class", "ensure", "prepare", "load")
        ),
    )
)


def _every_reward() -> dict[str, type[Reward]]:
    """The shared rewards and the worlds' own, in the order the worlds offer them, then any other shared one."""
    defined: dict[str, type[Reward]] = {}
    for entry in WORLDS.values():
        for name, reward in entry.reward_classes.items():
            if defined.setdefault(name, reward) is not reward or name in SHARED_REWARDS:
                where = f"{(SHARED_REWARDS.get(name) or defined[name]).__module__} and {reward.__module__}"
                raise ValueError(f"reward {name!r} is defined twice: by {where}")
    every = {**SHARED_REWARDS, **defined}
    offered = [name for entry in WORLDS.values() for name in entry.rewards if name in every]
    return {name: every[name] for name in dict.fromkeys([*offered, *every])}


REWARDS = _every_reward()
"""Every reward by name: the shared ones (rewards/) and those the worlds define (WorldEntry.reward_classes)."""
MODEL_FAMILIES = {model: family for entry in WORLDS.values() for model, family in entry.models.items()}
"""Every world's generators by name, with their family (a run fine-tunes one of them)."""
MODELS = tuple(MODEL_FAMILIES)


def world_entry(name: str) -> WorldEntry:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return WORLDS[name]


def model_family(model: str) -> str:
    if model not in MODEL_FAMILIES:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[model]


def ensure_world(name: str, root: Path = ARTIFACTS, log=print) -> Path:
    """Builds what world `name` builds here and is missing or stale; returns its directory."""
    return world_entry(name).ensure(name, root, log)


def load_world(name: str, root: Path = ARTIFACTS, log=print) -> World:
    return world_entry(name).load(name, root, log)


__all__ = [
    "ARTIFACTS",
    "MODELS",
    "REWARDS",
    "WORLDS",
    "World",
    "WorldEntry",
    "ensure_world",
    "load_world",
    "model_family",
    "world_entry",
]
