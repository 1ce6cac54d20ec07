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

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from models.digits import PROMPT_SETS, RECIPE, digit_of, load_prompts, load_splits
from models.networks import CNNClassifier, MLPClassifier
from models.shipped import CACHE
from models.text import PromptEncoder
from rewards.feedback import top_demonstrations
from worlds.embedded import EmbeddedEntry, EmbeddedWorld, load_weights
from worlds.metrics import frechet_distance, mean_pairwise_distance

METRICS = {"reward": True, "judge_acc": True, "diversity": True, "fid": False}  # name -> higher is better


@dataclass
class DigitsWorld(EmbeddedWorld):
    reward_classifier: MLPClassifier
    judge: CNNClassifier
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    recipe = RECIPE
    metrics = METRICS
    learned_reward_model = "digit"

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
                "fid": frechet_distance(self.judge.features, self.judge.num_features, images, real),
            }

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's: the best `fraction` of each digit's held-out judge-split images by `reward`."""
        images, labels = self.splits["judge"]
        return top_demonstrations(images, labels, self.prompts["train"], reward, fraction)


@dataclass(frozen=True)
class DigitsEntry(EmbeddedEntry):
    """A digits world as registered: its recipe (how its networks are trained)."""

    recipe = RECIPE
    rewards = ("digit", "compress", "gold")
    metrics = METRICS
    headline_metric = "judge_acc"
    headline_label = "held-out judge"

    def load(self, name: str, root: Path, log=print) -> DigitsWorld:
        directory = self.ensure(name, root, log)
        return DigitsWorld(
            name=name,
            config=self.config,
            manifest=RECIPE.read_manifest(directory),
            generator_states=self.generator_states(directory),
            encoder=PromptEncoder(load_weights(directory, CACHE)),
            reward_classifier=cast(MLPClassifier, self.frozen(directory, "reward_classifier")),
            judge=cast(CNNClassifier, self.frozen(directory, "judge")),
            prompts={split: load_prompts(split) for split in PROMPT_SETS},
            splits=load_splits(),
        )
