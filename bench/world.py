"""Worlds by name, built on first use and loaded from `artifacts/<world>/`.

A world's networks are rebuilt only when its manifest is missing or was built from another config;
the manifest's weight hashes are recorded with every result.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.digits import (
    IMAGE_SHAPE, PROMPT_SETS, WorldConfig, build_world, load_prompts, load_splits, tiny_world_config,
)
from models.networks import CNNClassifier, MLPClassifier, TextConditionedDenoiser
from models.policy import DiffusionPolicy
from models.text import TEXT_DIM, PromptEncoder

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORLDS = {
    "digits": WorldConfig(),
    # The same world with barely trained networks: for tests and smoke runs, never for results.
    "digits-tiny": tiny_world_config(),
}


@dataclass
class World:
    name: str
    config: WorldConfig
    manifest: dict
    denoiser_state: dict
    reward_classifier: MLPClassifier
    judge: CNNClassifier
    encoder: PromptEncoder
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def hashes(self) -> dict[str, str]:
        return self.manifest["hashes"]

    @property
    def base_model_hash(self) -> str:
        return self.hashes["denoiser"]

    def make_policy(self) -> DiffusionPolicy:
        """A fresh, trainable copy of the base generator."""
        denoiser = TextConditionedDenoiser(IMAGE_SHAPE, TEXT_DIM, self.config.denoiser_width, self.config.denoiser_depth)
        denoiser.load_state_dict(self.denoiser_state)
        return DiffusionPolicy(denoiser, self.encoder)


def check_world_name(name: str) -> str:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return name


def ensure_world(name: str, root: Path = ARTIFACTS, log=print) -> Path:
    """Builds the world's networks unless an up-to-date build exists; returns its directory."""
    config = WORLDS[check_world_name(name)]
    directory = root / name
    manifest = directory / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["config"] == asdict(config):
        return directory
    log(f"building world {name!r} into {directory} (once; later runs reuse it)")
    build_world(directory, config, log=log)
    return directory


def load_world(name: str, root: Path = ARTIFACTS, log=print) -> World:
    directory = ensure_world(name, root, log)
    config = WORLDS[name]
    manifest = json.loads((directory / "manifest.json").read_text())

    def weights(file: str) -> dict:
        return torch.load(directory / file, map_location="cpu", weights_only=True)

    reward_classifier = MLPClassifier(IMAGE_SHAPE)
    reward_classifier.load_state_dict(weights("reward_classifier.pt"))
    judge = CNNClassifier(IMAGE_SHAPE)
    judge.load_state_dict(weights("judge.pt"))
    return World(
        name=name,
        config=config,
        manifest=manifest,
        denoiser_state=weights("denoiser.pt"),
        reward_classifier=reward_classifier.eval().requires_grad_(False),
        judge=judge.eval().requires_grad_(False),
        encoder=PromptEncoder(weights("prompt_embeddings.pt")),
        prompts={split: load_prompts(split) for split in PROMPT_SETS},
        splits=load_splits(),
    )
