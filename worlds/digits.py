"""The embedded `digits` world (and its barely trained twin `digits-tiny`, for tests and smoke runs): 8x8 digits,
prompts naming a digit, three generators (diffusion, consistency, flow) built here deterministically
(models/digits.py), the `digit`, `compress` and `gold` rewards, and a judge no method ever sees.

Its networks ship with the repository (weights/digits/, models/shipped.py) and are installed on first use; they are
built only where the shipped ones are of another recipe (and `bench models` rebuilds them all to check the shipped
hashes). The manifest's weight hashes are recorded with every result. Evaluation, per prompt set (eval_seen: train
phrasings; eval_unseen: phrasings never trained on):
  reward     mean of the run's training reward (the proxy being optimised);
  judge_acc  fraction of images the judge reads as the prompted digit (the held-out measure of success);
  diversity  mean pairwise L2 distance between the judge features of images of the same prompt;
  fid        Frechet distance, in the judge's feature space, between all images of the set and the held-out
             test images of the prompted digits (torchmetrics' FID with the judge as `feature=` module).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from models.digits import (
    COMPONENTS,
    GENERATORS,
    PROMPT_SETS,
    WorldConfig,
    build_world,
    digit_of,
    install_shipped,
    load_prompts,
    load_splits,
    read_manifest,
    stale_components,
)
from models.networks import CNNClassifier, FeatureExtractor, MLPClassifier
from models.policy import ChainPolicy, Policy
from models.shipped import ship as ship_world
from models.shipped import shipped_manifest
from models.text import PromptEncoder
from rewards.feedback import top_demonstrations
from worlds.metrics import mean_pairwise_distance

METRICS = {"reward": True, "judge_acc": True, "diversity": True, "fid": False}  # name -> higher is better


def frechet_distance(judge: CNNClassifier, fake: torch.Tensor, real: torch.Tensor) -> float:
    # sync_on_compute=False: in a data-parallel run only the main process evaluates; it must not wait for the others
    fid = FrechetInceptionDistance(feature=FeatureExtractor(judge), normalize=True, sync_on_compute=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


@dataclass
class DigitsWorld:
    name: str
    config: WorldConfig
    manifest: dict
    generator_states: dict[str, dict]
    reward_classifier: MLPClassifier
    judge: CNNClassifier
    encoder: PromptEncoder
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metrics = METRICS
    learned_reward_model = "digit"

    def hash_of(self, component: str) -> str:
        return self.manifest["components"][component]["hash"]

    def _generator(self, model: str, source: str = "") -> tuple[str, type[ChainPolicy]]:
        if source:
            raise ValueError(f"world {self.name!r} builds its generators here: no checkpoint replaces them")
        if model not in GENERATORS:
            raise ValueError(f"unknown model {model!r} in world {self.name!r}; valid: {', '.join(GENERATORS)}")
        return GENERATORS[model]

    def model_hash(self, model: str, source: str = "") -> str:
        """The weight hash of a generator: the identity of the base model a run starts from."""
        return self.hash_of(self._generator(model, source)[0])

    def make_policy(self, model: str = "diffusion", source: str = "") -> Policy:
        """A fresh, trainable copy of one of the world's generators."""
        component, policy_class = self._generator(model, source)
        network = COMPONENTS[component][3](self.config)
        network.load_state_dict(self.generator_states[model])
        return policy_class(network, self.encoder)

    def score_images(
        self, images: torch.Tensor, prompts: list[str], samples_per_prompt: int, reward
    ) -> dict[str, float]:
        """The metrics of one evaluation set of images (prompt-major: each prompt's images are consecutive)."""
        labels = torch.tensor([digit_of(p) for p in prompts])
        real_images, real_labels = self.splits["test"]
        real = real_images[torch.isin(real_labels, labels.unique())]
        with torch.no_grad():
            return {
                "reward": float(reward(images, prompts).mean()),
                "judge_acc": float((self.judge(images).argmax(dim=1) == labels).float().mean()),
                "diversity": mean_pairwise_distance(self.judge.features(images), len(prompts) // samples_per_prompt),
                "fid": frechet_distance(self.judge, images, real),
            }

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's: the best `fraction` of each digit's held-out judge-split images by `reward`."""
        images, labels = self.splits["judge"]
        return top_demonstrations(images, labels, self.prompts["train"], reward, fraction)


@dataclass(frozen=True)
class DigitsEntry:
    """A digits world as registered: its recipe (how its networks are trained)."""

    config: WorldConfig
    models = {model: policy_class.family for model, (_, policy_class) in GENERATORS.items()}
    rewards = ("digit", "compress", "gold")
    headline_metric = "judge_acc"
    headline_label = "held-out judge"
    cells_side_by_side = True
    gpus_per_cell = 0.0
    takes_sources = False

    def generator_class(self, model: str) -> type:
        return GENERATORS[model][1]

    def ensure(self, name: str, root: Path, log=print) -> Path:
        """The shipped networks (weights/<name>/) where their recipe is this world's, built where not."""
        directory = root / name
        installed = install_shipped(directory, self.config, name)
        if installed:
            log(f"installed the shipped {', '.join(installed)} of world {name!r} (weights/{name}/, hashes checked)")
        stale = stale_components(directory, self.config)
        if stale:
            log(f"building {', '.join(stale)} of world {name!r} into {directory} (once; later runs reuse them)")
            build_world(directory, self.config, log=log)
        return directory

    def prepare(self, name: str, root: Path, log=print, ship: bool = False) -> None:
        """Trains every network from scratch into <root>/<name>-rebuilt and compares its hashes with the shipped
        manifest's; with `ship`, the rebuilt networks become the shipped ones. A world that ships none is built in
        place, as `ensure` does."""
        shipped = shipped_manifest(name)
        if not shipped["components"] and not ship:
            self.ensure(name, root, log)
            return
        rebuilt = root / f"{name}-rebuilt"
        shutil.rmtree(rebuilt, ignore_errors=True)
        log(f"building every network of world {name!r} from scratch into {rebuilt}")
        manifest = build_world(rebuilt, self.config, log=log)
        if ship:
            log(f"shipped the rebuilt networks as {ship_world(rebuilt, name, manifest)}")
            return
        differ = []
        for component, entry in manifest["components"].items():
            expected = shipped["components"].get(component, {}).get("hash", "(none)")
            same = entry["hash"] == expected
            log(f"  {component}: {'same as shipped' if same else 'DIFFERS from shipped'} ({entry['hash'][:12]})")
            if not same:
                differ.append(f"{component} (built {entry['hash'][:12]}, shipped {expected[:12]})")
        if differ:
            raise ValueError(
                f"the rebuilt {', '.join(differ)} differ from the shipped weights of world {name!r}: the build is "
                "deterministic on one kind of CPU, but another CPU or torch build sums floats in another order "
                "(vector width, threads), which moves the weights' last bits; results record the hash they ran "
                "with, and runs keep using the shipped weights"
            )

    def load(self, name: str, root: Path, log=print) -> DigitsWorld:
        directory = self.ensure(name, root, log)

        def weights(file: str) -> dict:
            return torch.load(directory / file, map_location="cpu", weights_only=True)

        def frozen(component: str) -> torch.nn.Module:
            network = COMPONENTS[component][3](self.config)
            network.load_state_dict(weights(f"{component}.pt"))
            return network.eval().requires_grad_(False)

        return DigitsWorld(
            name=name,
            config=self.config,
            manifest=read_manifest(directory),
            generator_states={model: weights(f"{component}.pt") for model, (component, _) in GENERATORS.items()},
            reward_classifier=cast(MLPClassifier, frozen("reward_classifier")),
            judge=cast(CNNClassifier, frozen("judge")),
            encoder=PromptEncoder(weights("prompt_embeddings.pt")),
            prompts={split: load_prompts(split) for split in PROMPT_SETS},
            splits=load_splits(),
        )
