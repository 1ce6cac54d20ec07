"""Worlds by name, built on first use and loaded from `artifacts/<world>/`.

A world's networks are rebuilt only when missing or built from another recipe (see
models/digits.py); the manifest's weight hashes are recorded with every result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.digits import (
    COMPONENTS, GENERATORS, PROMPT_SETS, WorldConfig, build_world, load_prompts, load_splits, read_manifest,
    stale_components, tiny_world_config,
)
from models.networks import CNNClassifier, MLPClassifier
from models.policy import ChainPolicy
from models.text import PromptEncoder

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORLDS = {
    "digits": WorldConfig(),
    # The same world with barely trained networks: for tests and smoke runs, never for results.
    "digits-tiny": tiny_world_config(),
}
MODELS = tuple(GENERATORS)
"""The generators every world offers, by name; a run fine-tunes one of them."""


@dataclass
class World:
    name: str
    config: WorldConfig
    manifest: dict
    generator_states: dict[str, dict]
    reward_classifier: MLPClassifier
    judge: CNNClassifier
    encoder: PromptEncoder
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def hash_of(self, component: str) -> str:
        return self.manifest["components"][component]["hash"]

    def model_hash(self, model: str) -> str:
        """The weight hash of a generator: the identity of the base model a run starts from."""
        return self.hash_of(GENERATORS[check_model_name(model)][0])

    def make_policy(self, model: str = "diffusion") -> ChainPolicy:
        """A fresh, trainable copy of one of the world's generators."""
        component, policy_class = GENERATORS[check_model_name(model)]
        network = COMPONENTS[component][3](self.config)
        network.load_state_dict(self.generator_states[model])
        return policy_class(network, self.encoder)


def check_world_name(name: str) -> str:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return name


def model_family(model: str) -> str:
    return GENERATORS[check_model_name(model)][1].family


def check_model_name(name: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(GENERATORS)}")
    return name


def ensure_world(name: str, root: Path = ARTIFACTS, log=print) -> Path:
    """Builds the world's stale networks (all of them the first time); returns its directory."""
    config = WORLDS[check_world_name(name)]
    directory = root / name
    stale = stale_components(directory, config)
    if stale:
        log(f"building {', '.join(stale)} of world {name!r} into {directory} (once; later runs reuse them)")
        build_world(directory, config, log=log)
    return directory


def load_world(name: str, root: Path = ARTIFACTS, log=print) -> World:
    directory = ensure_world(name, root, log)
    config = WORLDS[name]

    def weights(file: str) -> dict:
        return torch.load(directory / file, map_location="cpu", weights_only=True)

    def frozen(component: str) -> torch.nn.Module:
        network = COMPONENTS[component][3](config)
        network.load_state_dict(weights(f"{component}.pt"))
        return network.eval().requires_grad_(False)

    return World(
        name=name,
        config=config,
        manifest=read_manifest(directory),
        generator_states={model: weights(f"{component}.pt") for model, (component, _) in GENERATORS.items()},
        reward_classifier=frozen("reward_classifier"),
        judge=frozen("judge"),
        encoder=PromptEncoder(weights("prompt_embeddings.pt")),
        prompts={split: load_prompts(split) for split in PROMPT_SETS},
        splits=load_splits(),
    )
