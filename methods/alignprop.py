"""`alignprop`: AlignProp (Prabhudesai et al., "Aligning Text-to-Image Diffusion Models with Reward Backpropagation",
arXiv 2310.03739).

Reward backpropagation through the whole sampling chain (methods/toolkit/reward_gradients.py),
  L(theta) = -E_{c, x_T} [ r(x_0, c) ],   x_0 = G_theta(x_T, c),
made affordable by gradient checkpointing (each step's activations recomputed in the backward pass, so memory does
not grow with the chain) and randomized truncation: each iteration draws K uniformly from
{min_grad_steps, ..., T} and keeps the graph of the last K steps only, which the paper finds keeps the model from
collapsing onto the reward (always K = T) while still training the early, layout-setting steps.

Departures from the paper: the whole model is fine-tuned (the paper trains LoRA weights on Stable Diffusion; at scale
this suite's policies train LoRA weights too); the sampler is the family's own (DDIM with eta = 0 on the diffusion
model, the Euler ODE on the flow model, the multistep sampler on the consistency model). K is drawn per iteration, so
an iteration's compute varies: the usage declared for budgets is its expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.reward_gradients import reward_backprop, truncated_backprop_usage
from methods.trainer import Trainer, chain_work, make_optimizer


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(4, at_least=1)
    """Chains per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of each chain (T); None: the model's default."""
    min_grad_steps: int = option(1, at_least=1)
    """The fewest last steps the gradient flows through; K is drawn uniformly from here to T (T or more: always the
    whole chain, no truncation)."""
    eta: float = option(0.0, at_least=0)
    """DDIM's stochasticity on the diffusion model (0: deterministic)."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""
    gradient_checkpointing: bool = True
    """Recompute each step's activations in the backward pass (the paper's memory saving); one more forward each."""


def truncation_range(config: Config, steps: int) -> tuple[int, int]:
    """The smallest and largest K on chains of `steps` steps."""
    return min(config.min_grad_steps, steps), steps


class AlignProp(Trainer):
    name = "alignprop"
    version = "1"
    Config = Config
    needs_differentiable_reward = True
    search_space = {"learning_rate": Interval(1e-6, 1e-4, log=True), "eta": Interval(0.0, 1.0)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "min_grad_steps": 3}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, _ = chain_work(config, generator)
        low, high = truncation_range(config, steps)
        return truncated_backprop_usage(images, steps, (low + high) / 2, config.gradient_checkpointing)

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        steps = self.sampler_steps(cfg.sample_steps)
        low, high = truncation_range(cfg, steps)
        grad_steps = int(torch.randint(low, high + 1, (1,), generator=self.generator))
        stats = reward_backprop(self, prompts, steps, grad_steps, cfg.eta, cfg.gradient_checkpointing)
        return {**stats, "grad_steps": float(grad_steps)}
