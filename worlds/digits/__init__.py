"""The embedded `digits` world (and its barely trained twin `digits-tiny`, for tests and smoke runs): 8x8 digits,
prompts naming a digit, three generators (diffusion, consistency, flow) built here deterministically
(build.py, from data.py's data and prompt language), the `digit`, `compress` and `gold` rewards (rewards.py: digit and
gold are the world's own), and two judges no method ever sees, of different designs.

Its networks ship with the repository (weights/digits/, models/shipped.py) and are installed on first use; they are
built only where the shipped ones are of another recipe (and `bench models` rebuilds them all to check the shipped
hashes). The manifest's weight hashes are recorded with every result. Evaluation, per prompt set (eval_seen: train
phrasings; eval_unseen: phrasings never trained on):
  reward     mean of the run's training reward (the proxy being optimised);
  judge_acc  fraction of images the judge (a CNN) reads as the prompted digit (the held-out measure of success);
  kernel_acc the same fraction as the second judge reads it (models/kernel_judge.py: a kernel machine matching
             pixels, where the CNN learns strokes);
  judges_agree  the fraction of images on which the two judges' verdicts agree;
  reader_only   the fraction the `digit` reward's classifier reads as the prompted digit and both judges do not
             (reward hacking, seen by a panel rather than by one judge's design);
  diversity  mean pairwise L2 distance between the judge features of images of the same prompt;
  fid        Frechet distance, in the judge's feature space, between all images of the set and the held-out
             test images of the prompted digits (torchmetrics' FID with the judge as `feature=` module).
The second judge's metrics are read from the evaluation's samples as the store keeps them (sample_metrics), so that
`bench rescore` adds them to runs recorded before them exactly as a new run's evaluation computes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from models.kernel_judge import KernelClassifier
from models.networks import CNNClassifier, MLPClassifier
from models.shipped import CACHE
from models.text import PromptEncoder
from worlds.digits.build import RECIPE
from worlds.digits.data import IMAGE_SHAPE, digit_of, load_prompts, load_splits
from worlds.digits.rewards import DigitReward, DigitRewardModel, GoldReward
from worlds.embedded import EmbeddedEntry, EmbeddedWorld, load_weights
from worlds.metrics import PANEL_METRICS, frechet_distance, mean_pairwise_distance, panel_metrics

SECOND_JUDGE_METRIC = "kernel_acc"
METRICS = {
    "reward": True,
    "judge_acc": True,
    SECOND_JUDGE_METRIC: True,
    **PANEL_METRICS,
    "diversity": True,
    "fid": False,
}  # name -> higher is better


def top_demonstrations(
    images: torch.Tensor, labels: torch.Tensor, prompts: list[str], reward, fraction: float
) -> tuple[torch.Tensor, list[str]]:
    """The best `fraction` of each digit's images (N, C, H, W) by `reward`, each paired with the prompts
    naming its digit in turn: (images (M, C, H, W), prompts (M,)), digit-major."""
    by_digit = {}
    for prompt in prompts:
        by_digit.setdefault(digit_of(prompt), []).append(prompt)
    chosen, chosen_prompts = [], []
    for digit, phrasings in sorted(by_digit.items()):
        pool = images[labels == digit]
        named = [phrasings[i % len(phrasings)] for i in range(len(pool))]
        with torch.no_grad():
            scores = reward(pool, named)
        keep = scores.argsort(descending=True)[: max(1, round(fraction * len(pool)))]
        chosen.append(pool[keep])
        chosen_prompts += [named[i] for i in keep.tolist()]
    return torch.cat(chosen), chosen_prompts


@dataclass
class DigitsWorld(EmbeddedWorld):
    reward_classifier: MLPClassifier
    judge: CNNClassifier
    kernel_judge: KernelClassifier
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    recipe = RECIPE
    metrics = METRICS
    learned_reward_model = DigitRewardModel

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

    def sample_metrics(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The second judge's accuracy, and the panel's metrics (worlds/metrics.py: the two judges' agreement, the
        share the reward's classifier alone passes), each image's verdict read from the stored samples."""
        labels = torch.tensor([digit_of(p) for p in prompts])
        with torch.no_grad():
            judge, second, reader = (
                network(images).argmax(dim=1) == labels
                for network in (self.judge, self.kernel_judge, self.reward_classifier)
            )
        return {
            SECOND_JUDGE_METRIC: float(second.double().mean()),
            **panel_metrics(judge, second, reader, lambda verdicts: float(verdicts.double().mean())),
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
    reward_classes = {"digit": DigitReward, "gold": GoldReward}
    image_shapes = (IMAGE_SHAPE,)
    metrics = METRICS
    headline_metric = "judge_acc"
    headline_label = "held-out judge"
    second_judge_metric = SECOND_JUDGE_METRIC

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
            kernel_judge=cast(KernelClassifier, self.frozen(directory, "kernel_judge")),
            prompts=load_prompts(),
            splits=load_splits(),
        )
