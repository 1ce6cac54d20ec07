"""The embedded compositional world `scenes` (and its barely trained twin `scenes-tiny`, for tests and smoke runs):
GenEval and OCR in miniature. 16x16 scenes of up to four coloured handwritten digits in a 2x2 grid, prompts in
GenEval's six families plus text rendering (rules.py; data.py composes real scenes for them), two generators
(diffusion, flow) built here deterministically (build.py), the `geneval`, `ocr` (the world's own: rewards.py) and
`compress` rewards, and two judges no method ever sees, of different designs.

Evaluation follows GenEval's protocol: a reader turns each image into a scene (per slot: a digit or empty, and a
colour) and each prompt family's rule checks it. Per prompt set (eval_seen: train prompts; eval_unseen: combinations
never trained on):
  reward            mean of the run's training reward (the proxy being optimised);
  judge_<family>    the fraction of the family's images whose judge reading satisfies the prompt (GenEval's score
                    per task: single, two, counting, colour, position, binding, and ocr, the number read exactly);
  judge_score       the mean of those seven (GenEval's overall score, with text rendering as a seventh task): the
                    held-out measure of success;
  reader_score      the same score as the rewards' reader reads the images: far above judge_score, a method has
                    learnt to satisfy the reward's reader without drawing what the prompt asks (reward hacking);
  judge_soft        GenEval 2's soft score in miniature: per family the mean share of a prompt's atoms the judge
                    reads as satisfied, averaged as judge_score is;
  kernel_score      judge_score as the second judge reads the images (models/kernel_judge.py: presence by ink,
                    colour by channel, the digit by a kernel machine matching pixels, where the judge's CNN learns
                    strokes);
  judges_agree      the share of images on which the two judges' verdicts agree, averaged as judge_score is;
  reader_only       the share the rewards' reader passes and both judges fail, averaged alike (reward hacking, seen
                    by a panel rather than by one judge's design);
  diversity         mean pairwise L2 distance between the judge features of images of the same prompt;
  fid               Frechet distance, in the judge's features, between the set and real scenes composed for the
                    same prompts from the held-out test digits.
judge_soft, the second judge's score and the panel's metrics are read from the evaluation's samples as the store
keeps them (sample_metrics), so that `bench rescore` adds them to runs recorded before them exactly as a new run's
evaluation computes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from models.kernel_judge import KernelSlotJudge
from models.networks import SlotReader
from models.shipped import CACHE
from models.text import TokenEncoder
from rewards.learned import PromptRewardModel
from worlds.digits.data import load_splits
from worlds.embedded import EmbeddedEntry, EmbeddedWorld, load_weights
from worlds.metrics import PANEL_METRICS, frechet_distance, mean_pairwise_distance, panel_metrics
from worlds.scenes.build import RECIPE
from worlds.scenes.data import IMAGE_SHAPE, compose, load_prompts
from worlds.scenes.rewards import GenevalReward, OcrReward
from worlds.scenes.rules import FAMILIES, SLOTS, parse, partial, strict

SECOND_JUDGE_METRIC = "kernel_score"
METRICS = {
    "reward": True,
    "judge_score": True,
    "reader_score": True,
    "judge_soft": True,
    SECOND_JUDGE_METRIC: True,
    **PANEL_METRICS,
    **{f"judge_{family}": True for family in FAMILIES},
    "diversity": True,
    "fid": False,
}  # name -> higher is better
DEMONSTRATION_CANDIDATES = 4
"""Real scenes composed per train prompt, from the judge split, that the annotator's demonstrations are chosen from."""


def by_family(prompts: list[str], values: list[float]) -> dict[str, float]:
    """The mean of `values` (one an image) per family present in `prompts`, in the order they first appear."""
    grouped: dict[str, list[float]] = {}
    for prompt, value in zip(prompts, values):
        grouped.setdefault(parse(prompt).family, []).append(value)
    return {family: sum(v) / len(v) for family, v in grouped.items()}


def family_mean(prompts: list[str], values: list[float]) -> float:
    """The mean over the families of their images' mean `values`: how GenEval averages its tasks."""
    scores = by_family(prompts, values)
    return sum(scores.values()) / len(scores)


def verdicts(
    scenes: list[list[tuple[int, int]]], prompts: list[str], rule: Callable[..., float] = strict
) -> list[float]:
    """`rule` on each image's scene as a reader read it (SlotReader.read), by default GenEval's strict rule (1: it
    satisfies its prompt whole, 0: not)."""
    return [float(rule(parse(prompt), scene)) for prompt, scene in zip(prompts, scenes)]


def family_scores(
    reader: SlotReader, images: torch.Tensor, prompts: list[str], rule: Callable[..., float] = strict
) -> dict[str, float]:
    """GenEval's score per family present in `prompts`: the mean over its images of `rule` on the reader's scene."""
    return by_family(prompts, verdicts(reader.read(images), prompts, rule))


@dataclass
class ScenesWorld(EmbeddedWorld):
    reader: SlotReader
    judge: SlotReader
    kernel_judge: KernelSlotJudge
    prompts: dict[str, list[str]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    recipe = RECIPE
    metrics = METRICS
    learned_reward_model = PromptRewardModel

    def score_images(
        self, images: torch.Tensor, prompts: list[str], samples_per_prompt: int, reward
    ) -> dict[str, float]:
        """The metrics of one evaluation set of images (prompt-major: each prompt's images are consecutive)."""
        real = compose(prompts, *self.splits["test"], torch.Generator().manual_seed(0))
        scores = family_scores(self.judge, images, prompts)
        features = self.judge.features
        with torch.no_grad():
            return {
                "reward": float(reward(images, prompts).mean()),
                "judge_score": sum(scores.values()) / len(scores),
                **{f"judge_{family}": score for family, score in scores.items()},
                "reader_score": family_mean(prompts, verdicts(self.reader.read(images), prompts)),
                "diversity": mean_pairwise_distance(features(images), len(prompts) // samples_per_prompt),
                "fid": frechet_distance(features, SLOTS * self.judge.num_features, images, real),
            }

    def sample_metrics(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The judge's soft score beside its strict one (GenEval 2's Soft-TIFA in miniature): per family, the mean
        share of each prompt's atoms the judge reads as satisfied (rules.partial: each object, its count, its colour,
        the relation, each character of a number), averaged over the families as judge_score is; the second judge's
        score, and the panel's metrics (worlds/metrics.py: the two judges' agreement, the share the rewards' reader
        alone passes)."""
        read = [network.read(images) for network in (self.judge, self.kernel_judge, self.reader)]
        judge, second, reader = (torch.tensor(verdicts(scenes, prompts), dtype=torch.bool) for scenes in read)
        return {
            "judge_soft": family_mean(prompts, verdicts(read[0], prompts, partial)),  # the judge's scenes, read once
            SECOND_JUDGE_METRIC: family_mean(prompts, second.float().tolist()),
            **panel_metrics(judge, second, reader, lambda passed: family_mean(prompts, passed.float().tolist())),
        }

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's: of DEMONSTRATION_CANDIDATES real scenes composed for each train prompt from the judge
        split (digits the generators never saw), the best `fraction` by `reward`, each with its prompt."""
        prompts = [p for p in self.prompts["train"] for _ in range(DEMONSTRATION_CANDIDATES)]
        images = compose(prompts, *self.splits["judge"], torch.Generator().manual_seed(0))
        with torch.no_grad():
            scores = reward(images, prompts).view(-1, DEMONSTRATION_CANDIDATES)
        keep = max(1, round(fraction * DEMONSTRATION_CANDIDATES))
        best = scores.argsort(dim=1, descending=True)[:, :keep]
        index = (best + DEMONSTRATION_CANDIDATES * torch.arange(len(scores))[:, None]).flatten()
        return images[index], [prompts[i] for i in index.tolist()]


@dataclass(frozen=True)
class ScenesEntry(EmbeddedEntry):
    """A scenes world as registered: its recipe (how its networks are trained)."""

    recipe = RECIPE
    rewards = ("geneval", "ocr", "compress")
    reward_classes = {"geneval": GenevalReward, "ocr": OcrReward}
    image_shapes = (IMAGE_SHAPE,)
    metrics = METRICS
    headline_metric = "judge_score"
    headline_label = "held-out judge (GenEval-style score)"
    second_judge_metric = SECOND_JUDGE_METRIC

    def prompt_group(self, prompt: str) -> str:
        return parse(prompt).family

    def load(self, name: str, root: Path, log=print) -> ScenesWorld:
        directory = self.ensure(name, root, log)
        return ScenesWorld(
            name=name,
            config=self.config,
            manifest=RECIPE.read_manifest(directory),
            generator_states=self.generator_states(directory),
            encoder=TokenEncoder(load_weights(directory, CACHE)),
            reader=cast(SlotReader, self.frozen(directory, "reader")),
            judge=cast(SlotReader, self.frozen(directory, "judge")),
            kernel_judge=cast(KernelSlotJudge, self.frozen(directory, "kernel_judge")),
            prompts=load_prompts(),
            splits=load_splits(),
        )
