"""Worlds by name, built on first use and loaded from `artifacts/<world>/` (or, at scale, the model cache).

A world offers generators (by model name, each of a family), rewards, prompts and its evaluation metrics:
  digits, digits-tiny  the embedded world of 8x8 digits (models/digits.py); its networks are rebuilt only when
                       missing or built from another recipe, and the manifest's weight hashes are recorded with
                       every result;
  scale, scale-tiny    Stable Diffusion 1.5, LCM and SD3 through diffusers with the published reward models, and
                       their tiny CPU-sized twin (bench/scale_world.py).
Model names are unique across worlds, so an entry `method@model` names its world's kind too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.evaluate import DIGIT_METRICS, score_digit_images
from bench.scale_world import SCALE, SCALE_TINY, ScaleWorldConfig, build_tiny, load_scale_world
from models.digits import (
    COMPONENTS, GENERATORS, PROMPT_SETS, WorldConfig, build_world, load_prompts, load_splits, read_manifest,
    stale_components, tiny_world_config,
)
from models.networks import CNNClassifier, MLPClassifier
from models.policy import ChainPolicy
from models.text import PromptEncoder
from rewards.feedback import top_demonstrations

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORLDS = {
    "digits": WorldConfig(),
    # The same world with barely trained networks: for tests and smoke runs, never for results.
    "digits-tiny": tiny_world_config(),
    "scale": SCALE,
    "scale-tiny": SCALE_TINY,
}
DIGIT_REWARDS = ("digit", "compress", "gold")
MODEL_FAMILIES = {**{model: policy_class.family for model, (_, policy_class) in GENERATORS.items()},
                  **SCALE.families()}
"""Every world's generators by name, with their family (a run fine-tunes one of them)."""
MODELS = tuple(MODEL_FAMILIES)


def world_models(name: str) -> tuple[str, ...]:
    """The generators world `name` offers, known without loading it."""
    return tuple(WORLDS[name].models) if is_scale_world(name) else tuple(GENERATORS)


def world_rewards(name: str) -> tuple[str, ...]:
    """The rewards world `name` offers, known without loading it."""
    return tuple(WORLDS[name].rewards) if is_scale_world(name) else DIGIT_REWARDS


def is_scale_world(name: str) -> bool:
    return isinstance(WORLDS[check_world_name(name)], ScaleWorldConfig)


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
    metrics = DIGIT_METRICS
    learned_reward_model = "digit"

    def hash_of(self, component: str) -> str:
        return self.manifest["components"][component]["hash"]

    def _generator(self, model: str) -> tuple[str, type]:
        if model not in GENERATORS:
            raise ValueError(f"unknown model {model!r} in world {self.name!r}; valid: {', '.join(GENERATORS)}")
        return GENERATORS[model]

    def model_hash(self, model: str) -> str:
        """The weight hash of a generator: the identity of the base model a run starts from."""
        return self.hash_of(self._generator(model)[0])

    def make_policy(self, model: str = "diffusion") -> ChainPolicy:
        """A fresh, trainable copy of one of the world's generators."""
        component, policy_class = self._generator(model)
        network = COMPONENTS[component][3](self.config)
        network.load_state_dict(self.generator_states[model])
        return policy_class(network, self.encoder)

    def score_images(self, images: torch.Tensor, prompts: list[str], samples_per_prompt: int, reward) -> dict[str, float]:
        return score_digit_images(images, prompts, samples_per_prompt, self, reward)

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's: the best `fraction` of each digit's held-out judge-split images by `reward`."""
        images, labels = self.splits["judge"]
        return top_demonstrations(images, labels, self.prompts["train"], reward, fraction)


def check_world_name(name: str) -> str:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return name


def model_family(model: str) -> str:
    return MODEL_FAMILIES[check_model_name(model)]


def check_model_name(name: str) -> str:
    if name not in MODEL_FAMILIES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_FAMILIES)}")
    return name


def ensure_world(name: str, root: Path = ARTIFACTS, log=print) -> Path:
    """Builds the world's stale networks (all of them the first time); returns its directory. A scale world's
    generators are checkpoints in the model cache: nothing to build, except the tiny twin's toy models."""
    config = WORLDS[check_world_name(name)]
    directory = root / name
    if is_scale_world(name):
        if config.built_here:
            build_tiny(directory, log)
        return directory
    stale = stale_components(directory, config)
    if stale:
        log(f"building {', '.join(stale)} of world {name!r} into {directory} (once; later runs reuse them)")
        build_world(directory, config, log=log)
    return directory


def load_world(name: str, root: Path = ARTIFACTS, log=print):
    """The world `name`: a World (digits) or a ScaleWorld."""
    config = WORLDS[check_world_name(name)]
    if is_scale_world(name):
        return load_scale_world(name, config, root, log)
    directory = ensure_world(name, root, log)

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
