"""Worlds by name, built on first use into `artifacts/<world>/` (or, at scale, read from the model cache).

A world offers generators (by model name, each of a family), rewards, prompts and its evaluation (worlds/base.py):
  digits, digits-tiny  the embedded world of 8x8 digits (worlds/digits.py, its networks built by models/digits.py);
  scenes, scenes-tiny  the embedded compositional world: scenes of coloured digits, prompts in GenEval's families
                       and text rendering (worlds/scenes.py, its networks built by models/scenes.py);
  scale, scale-tiny    Stable Diffusion 1.5, LCM, SD3, SD3.5 and FLUX through diffusers with the published reward
                       models, and their tiny CPU-sized twin (worlds/scale.py).
Model names are unique across worlds, so an entry `method@model` names its world's kind too. An installed package adds
its own through the entry-point group `rlhf_bench.worlds` (models/installed.py).
"""

from __future__ import annotations

from pathlib import Path

from models.digits import WorldConfig, tiny_world_config
from models.installed import installed_entries
from models.scenes import ScenesConfig, tiny_scenes_config
from worlds.base import World, WorldEntry
from worlds.digits import DigitsEntry
from worlds.scale import SCALE, SCALE_TINY, ScaleEntry
from worlds.scenes import ScenesEntry

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
        "a WorldEntry (worlds/base.py: models, rewards, generator_class, ensure, prepare, load)",
        lambda entry: all(
            hasattr(entry, a) for a in ("models", "rewards", "generator_class", "ensure", "prepare", "load")
        ),
    )
)
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
    "WORLDS",
    "World",
    "WorldEntry",
    "ensure_world",
    "load_world",
    "model_family",
    "world_entry",
]
