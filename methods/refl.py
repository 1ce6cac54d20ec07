"""`refl`: Reward Feedback Learning, ReFL (Xu et al., "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation", NeurIPS 2023, arXiv 2304.05977, Algorithm 1).

The reward of a one-step prediction from a random late step. Each iteration draws a step k uniformly from the last
`window` fraction of the T sampler steps, runs the chain x_T -> x_k without gradients, and predicts the clean image
from x_k in one network call with gradients: x0_theta(x_k) (Tweedie's estimate on the diffusion model,
x_k - t_k v_theta on the flow model, the consistency function on the consistency model: the sampler's own prediction
at that step). Late steps are where the prediction already shows what the reward judges. With a pre-training
loss on data D as the regularizer,
  L(theta) = -lambda E_{c, x_T, k} [ phi(r(x0_theta(x_k), c)) ] + E_{(x, c) ~ D} [ l_theta(x, c) ],
where l_theta is the family's own training loss (denoising, flow matching or consistency) and phi is the identity,
or with `reward_margin` m the paper's hinge, phi(r) = -ReLU(m - r) (the reward stops pulling once it passes m).

Departures from the paper: a method in this suite sees no pre-training data, so D is a pool of `pretrain_pool` of the
base model's own samples (its prompts drawn from the train prompts), drawn once at the first step: the same
distribution the base learned, so the regularizer keeps the model near it. The two losses are summed in one
optimizer step (the paper alternates a pre-training and a ReFL step). phi defaults to the identity, since a hinge
point depends on the reward's scale. The whole model is fine-tuned (the paper fine-tunes all of Stable Diffusion's
UNet; at scale this suite's policies train LoRA weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, make_optimizer, prompt_groups


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(4, at_least=1)
    """Chains per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of each chain (T); None: the model's default."""
    window: float = option(0.25, above=0, at_most=1)
    """The late steps k is drawn from, as a fraction of T (at least the last step); the paper's last 10 of 40."""
    reward_weight: float = option(1.0, above=0)
    """lambda: the reward term's weight against the pre-training loss."""
    reward_margin: float | None = option(None)
    """m of the hinge -ReLU(m - r); None: the reward itself."""
    pretrain_pool: int = option(256, at_least=0)
    """Base-model samples drawn once, the regularizer's data; 0: no regularizer."""
    pretrain_batch: int = option(16, at_least=1)
    """Pool images per iteration in the pre-training loss."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def late_steps(config: Config, steps: int) -> int:
    """How many of the last steps of a chain of `steps` k is drawn from (at least one)."""
    return max(1, round(config.window * steps))


class ReFL(Trainer):
    name = "refl"
    version = "1"
    Config = Config
    needs_differentiable_reward = True
    search_space = {"learning_rate": Interval(1e-6, 1e-4, log=True), "reward_weight": Interval(0.1, 10.0, log=True)}
    small_config = {
        "prompts_per_iter": 2,
        "samples_per_prompt": 3,
        "sample_steps": 3,
        "window": 0.3,
        "pretrain_pool": 4,
        "pretrain_batch": 2,
    }

    @classmethod
    def iteration_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the chain to x_k (expected steps k + 1 over the window), the prediction's backward, the pre-training loss
        images = config.prompts_per_iter * config.samples_per_prompt
        steps = config.sample_steps or generator.default_steps
        late = late_steps(config, steps)
        taken = steps - (late - 1) / 2  # k + 1 averaged over k in [T - late, T - 1]
        pretrain = min(config.pretrain_batch, config.pretrain_pool) * generator.loss_nfe if config.pretrain_pool else 0
        return {"nfe": images * (taken + 2) + pretrain, "reward_queries": images, "samples": images}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the first step also draws the pool
        steps = config.sample_steps or generator.default_steps
        usage = cls.iteration_usage(config, generator)
        pool = config.pretrain_pool
        return {**usage, "nfe": usage["nfe"] + pool * steps, "samples": usage["samples"] + pool}

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.pool: dict | None = None  # the regularizer's data, drawn at the first step

    def _draw_pool(self, steps: int) -> dict:
        prompts = prompt_groups(self.prompts, self.config.pretrain_pool, 1, self.generator)
        with torch.no_grad():
            images = self.policy.sample(prompts, steps, self.generator).images
        return {"images": images, "prompts": prompts}

    def step(self) -> dict[str, float]:
        cfg = self.config
        steps = self.sampler_steps(cfg.sample_steps)
        if self.pool is None and cfg.pretrain_pool:
            self.pool = self._draw_pool(steps)
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        late = late_steps(cfg, steps)
        k = int(torch.randint(steps - late, steps, (1,), generator=self.generator))
        chain = self.policy.sample(prompts, steps, self.generator, grad=True, grad_steps=1, until=k + 1)
        rewards = self.reward(self.policy.decode(chain.predictions[:, k]), prompts)
        hinged = rewards if cfg.reward_margin is None else -torch.relu(cfg.reward_margin - rewards)
        loss = -cfg.reward_weight * hinged.mean()
        stats = {"reward": rewards.mean().item(), "stop_step": float(k)}
        if self.pool is not None:
            index = torch.randperm(len(self.pool["prompts"]), generator=self.generator)[: cfg.pretrain_batch]
            prompts_of = [self.pool["prompts"][i] for i in index.tolist()]
            pretrain = self.policy.loss(self.pool["images"][index], prompts_of, self.generator)
            loss = loss + pretrain
            stats["pretrain_loss"] = pretrain.item()
        self.descend(loss, cfg.max_grad_norm)
        return {**stats, "loss": loss.item()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pool": self.pool}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pool = state["pool"]
