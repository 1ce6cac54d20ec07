"""`sft`: supervised fine-tuning on the annotator's demonstrations, the first stage of the classic RLHF recipe
(Ouyang et al. 2022) and the demonstrations-only baseline of `aihf`.

  L(theta) = E_{(x, c) ~ demonstrations} L_family(theta; x, c),
the model's own training loss (denoising, consistency or flow matching) on minibatches of the demonstrations.
It reads no preferences and no reward: its results do not depend on a label budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, make_optimizer


@dataclass(frozen=True)
class Config(Options):
    batch: int = option(32, at_least=1)
    """Demonstrations per gradient step."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


class SFT(Trainer):
    name = "sft"
    version = "1"
    Config = Config
    learns_from_feedback = True
    compared_on = ()  # AIHF's baseline: compared with it in the feedback suite
    search_space = {"learning_rate": Interval(3e-6, 3e-4, log=True), "batch": Interval(8, 64)}
    small_config = {"batch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        return {"nfe": config.batch * generator.loss_nfe}

    def __init__(self, policy, feedback, prompts, config: Config, seed: int):
        super().__init__(policy, feedback, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.demo_images, self.demo_prompts = feedback.demonstrations

    def step(self) -> dict[str, float]:
        batch = self.parallel.share(self.config.batch, "sft.batch")
        index = torch.randint(0, len(self.demo_prompts), (batch,), generator=self.generator)
        loss = self.policy.loss(self.demo_images[index], [self.demo_prompts[i] for i in index.tolist()], self.generator)
        self.descend(loss, self.config.max_grad_norm)
        return {"loss": loss.item()}
