"""The compositional world's rewards, both read by the world's reward reader (an MLP per slot, trained on the train
split only; the judge that scores the leaderboard is another reader, trained on data this one never saw):

  geneval  GenEval's rule with partial credit (rules.partial) on the reader's most likely scene: the
           fraction of the prompt satisfied, in [0, 1]; not differentiable, as Flow-GRPO trains on GenEval;
  ocr      log P(the scene reads as the prompt asks) under the reader's per-slot distributions
           (scene_rules.satisfaction_probability), differentiable: for a number of four digits, the sum of the
           per-slot log-likelihoods of its digits, as an OCR model's likelihood of the requested text rewards.
"""

from __future__ import annotations

import torch

from models.networks import SlotReader
from worlds.scenes.rules import parse, partial, satisfaction_probability

FLOOR = 1e-6
"""Added to the probability before the log: the reward stays finite (>= log 1e-6) with gradients everywhere."""


class _ReaderReward:
    def __init__(self, reader: SlotReader, weights_hash: str):
        self.reader = reader.eval().requires_grad_(False)
        self.version = f"1-{weights_hash[:8]}"

    @classmethod
    def from_world(cls, world):
        return cls(world.reader, world.hash_of("reader"))


class GenevalReward(_ReaderReward):
    name = "geneval"
    differentiable = False
    higher_is_better = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scenes = self.reader.read(images.detach())
        scores = [partial(parse(prompt), scene) for prompt, scene in zip(prompts, scenes)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


class OcrReward(_ReaderReward):
    name = "ocr"
    differentiable = True
    higher_is_better = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        digit_logits, colour_logits = self.reader(images)
        digits, colours = digit_logits.softmax(dim=2), colour_logits.softmax(dim=2)
        chances = [satisfaction_probability(parse(p), d, c) for p, d, c in zip(prompts, digits, colours)]
        return torch.log(torch.stack(chances) + FLOOR).float()
