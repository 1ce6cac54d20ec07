"""`draft`: DRaFT-K and DRaFT-LV (Clark et al., "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
ICLR 2024, arXiv 2309.17400).

The sampler's image is a differentiable function of theta and the chain's noise, so the reward is maximised by its
gradient through the chain (methods/toolkit/reward_gradients.py),
  L(theta) = -E_{c, x_T} [ r(x_0, c) ],   x_0 = G_theta(x_T, c),
truncated to the last K steps: x_{T-K} is computed without gradients, and grad L flows through the last K steps only
(DRaFT-K; K = 1, the paper's recommendation, takes the gradient of the reward through the last denoising step, and
K = T is full backpropagation, AlignProp without its random truncation).

DRaFT-LV (`lv_samples` n > 0, K = 1): a lower-variance estimate of DRaFT-1's gradient. The chain runs to x_0
without gradients; x_0 is noised n times to the last step's timestep, x_1^i = noised(sg(x_0), t_1, eps_i), and each
copy is denoised by the last step with gradients,
  L_LV(theta) = -E [ 1/n sum_i r(step_theta(x_1^i), c) ].

Departures from the paper: the whole model is fine-tuned (the paper trains LoRA weights on Stable Diffusion; at scale
this suite's policies train LoRA weights too); the sampler is the family's own (DDIM with eta = 0 on the diffusion
model, the Euler ODE on the flow model, the multistep sampler on the consistency model, whose steps are stochastic);
the paper's gradient checkpointing is an option (`gradient_checkpointing`), off by default as it only saves memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.reward_gradients import ascend_reward, reward_backprop, truncated_backprop_usage
from methods.trainer import Trainer, chain_work, make_optimizer
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(4, at_least=1)
    """Chains per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of each chain; None: the model's default."""
    grad_steps: int = option(1, at_least=1)
    """K: the last steps of the chain the reward's gradient flows through (at most the chain's steps)."""
    lv_samples: int = option(0, at_least=0)
    """DRaFT-LV's n: re-noisings of the final image denoised by the last step with gradients (K = 1 only); 0: plain
    DRaFT-K."""
    eta: float = option(0.0, at_least=0)
    """DDIM's stochasticity on the diffusion model (0: deterministic, as the paper samples)."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""
    gradient_checkpointing: bool = False
    """Recompute each differentiated step's activations in the backward pass: less memory, one more forward each."""

    def __post_init__(self):
        super().__post_init__()
        if self.lv_samples and self.grad_steps != 1:
            raise ValueError(
                f"draft.lv_samples needs draft.grad_steps 1 (DRaFT-LV is DRaFT-1's), got {self.grad_steps}"
            )


class DRaFT(Trainer):
    name = "draft"
    version = "1"
    Config = Config
    needs_differentiable_reward = True
    search_space = {
        "learning_rate": Interval(1e-6, 1e-4, log=True),
        "grad_steps": Interval(1, 5),
        "eta": Interval(0.0, 1.0),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, _ = chain_work(config, generator)
        if config.lv_samples:  # the chain without gradients, then n last steps with them
            copies = images * config.lv_samples
            last = copies * (4 if config.gradient_checkpointing else 3)
            return {"nfe": images * steps + last, "reward_queries": copies, "samples": images + copies}
        return truncated_backprop_usage(images, steps, min(config.grad_steps, steps), config.gradient_checkpointing)

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        steps = self.sampler_steps(cfg.sample_steps)
        if cfg.lv_samples:
            return self._low_variance_step(prompts, steps)
        return reward_backprop(self, prompts, steps, min(cfg.grad_steps, steps), cfg.eta, cfg.gradient_checkpointing)

    def _low_variance_step(self, prompts: list[str], steps: int) -> dict[str, float]:
        cfg, n = self.config, self.config.lv_samples
        with torch.no_grad():
            chain = self.policy.sample(prompts, steps, self.generator, Sampler(noise=cfg.eta))
        final = chain.latents[:, -1].repeat(n, *(1,) * (chain.latents.dim() - 2))
        last = chain.timesteps[-1:]
        noise = torch.randn(final.shape, generator=self.generator).to(final.device)
        copies = prompts * n
        denoised = self.policy.sample(
            copies,
            last,
            self.generator,
            Sampler(noise=cfg.eta),
            initial=self.policy.noised(final, last[0], noise),
            grad=True,
            checkpoint=cfg.gradient_checkpointing,
        )
        return ascend_reward(self, denoised.images, copies)
