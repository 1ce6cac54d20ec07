"""`best_of_n`: inference-time selection. Draw N candidates per prompt, keep the best by reward.

Objective: none is trained; for each prompt, x* = argmax_{x_1..x_N ~ p_base} r(x, prompt).
The budget is spent at inference: at a milestone with budget B (in the run's unit), each evaluation
prompt gets N = floor(B / c) candidates, where c is the cost of one candidate for every prompt of
the evaluation set (prompts x sampler steps in NFE, prompts in reward queries or samples), capped
by `max_candidates`. The first candidate uses the evaluation noise, so N = 1 is the base model; the
others are drawn from noise seeded by the run's seed, so that seeds are independent replicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Options, option
from methods.trainer import Trainer


@dataclass(frozen=True)
class Config(Options):
    max_candidates: int = option(64, at_least=1)
    """Upper bound on N, the candidates drawn per prompt."""


def candidates_for_budget(unit: str, amount: float, prompts: int, steps: int, cap: int) -> int:
    """N = floor(budget / cost of one candidate per prompt), at least 1, at most `cap`."""
    cost = {"nfe": prompts * steps, "reward_queries": prompts, "samples": prompts}[unit]
    return max(1, min(cap, int(amount // cost)))


class BestOfN(Trainer):
    name = "best_of_n"
    version = "2"
    Config = Config
    trains = False

    @classmethod
    def step_usage(cls, config, generator: type) -> dict[str, float]:
        return {}  # it never trains: its cost is the evaluation's generation, which the harness counts

    @classmethod
    def incompatibility(cls, reward_cls, budget_unit: str) -> str | None:
        if budget_unit == "wall_s":
            return "spends its budget at inference and needs a countable budget unit (nfe, reward_queries or samples)"
        return super().incompatibility(reward_cls, budget_unit)

    def step(self) -> dict[str, float]:
        raise RuntimeError("best_of_n spends its budget at inference; the harness never steps it")

    @torch.no_grad()
    def generate(self, prompts, steps, generator, budget) -> torch.Tensor:
        n = candidates_for_budget(budget.unit, budget.amount, len(prompts), steps, self.config.max_candidates)
        # Re-derived on every call, so that generating the same prompts twice gives the same images.
        candidates = torch.Generator().manual_seed(self.seed)
        best_images, best_rewards = None, None
        for k in range(n):
            images = self.policy.sample(prompts, steps, generator if k == 0 else candidates).images
            rewards = self.reward(images, prompts)
            if best_images is None:
                best_images, best_rewards = images, rewards
            else:
                better = rewards > best_rewards
                best_images = torch.where(better[:, None, None, None], images, best_images)
                best_rewards = torch.maximum(rewards, best_rewards)
        return best_images
