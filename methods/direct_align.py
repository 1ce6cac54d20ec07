"""`direct_align`: Direct-Align, the reward-gradient estimator of SRPO (Shen et al., "Directly Aligning the Full
Diffusion Trajectory with Fine-Grained Human Preference", arXiv 2509.06942; code: Tencent-Hunyuan/SRPO).

ReFL and DRaFT (methods/refl.py, methods/draft.py) take the reward's gradient at the chain's late, low-noise steps
only, since a one-step prediction of the clean image from a noisy early state is too blurred to be rewarded; the
paper finds that this late-step bias is what lets them hack the reward. Direct-Align recovers the clean image from
any noise level exactly up to the model's own step, because the noise is known. For a clean sample x_0 of the policy
(the deterministic ODE's, no gradients) and the noise eps it was drawn from (its chain's x_1: the paper's online
rollouts reuse their initial noise), at a noise level sigma drawn uniformly from [sigma_min, sigma_max]:
  1. inject the known noise:        x_sigma = (1 - sigma) x_0 + sigma eps,
  2. one Euler step with gradients:  x_s = x_sigma + (s - sigma) v_theta(x_sigma, sigma, c),   s = max(sigma - dt, 0),
  3. recover the clean image:        x0_hat = (x_s - s eps) / (1 - s),
exact where v_theta is the straight path's eps - x_0 (a test), and at s = 0 ReFL's one-step prediction
x_sigma - sigma v_theta. The reward of x0_hat is discounted towards the late steps, where hacking starts:
  L(theta) = -E_{c, eps, sigma} [ lambda(u) r(x0_hat, c) ],   lambda(u) = 3u / (1 + 2u),
u = (sigma - sigma_min) / (sigma_max - sigma_min) the noise level's place in its range (the reference code's discount,
SD3's time shift 3 of a linear ramp: 0 at the least noise, 1 at the most).

Departures from the paper: SRPO's Semantic Relative Preference (the reward under a prompt with a positive control
word minus the reward under a negative one, which cancels the reward's text-independent bias) is not built: it needs
a reward whose text reads style words (HPS, PickScore), and the embedded worlds' rewards read digits, counts, colours
and characters, none of which a style word names; so this is SRPO's Direct-Align on the plain reward, with the
discount as its regularizer. The Euler step uses the conditional velocity without guidance, as the reference's
training step does (its train_cfg 1); the rollouts use the model's sampler. Each sample draws its own sigma (the
reference draws one per step of its gradient accumulation). The whole model is fine-tuned (the paper fine-tunes
FLUX.1-dev's full transformer too); the reference's offline mode (real images in place of rollouts) is not built,
as a method here sees no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(4, at_least=1)
    """Samples per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """Steps of the deterministic sampler that draws the clean samples; None: the model's default."""
    sigma_min: float = option(0.05, at_least=0, below=1)
    """The least noise level the clean sample is re-noised to."""
    sigma_max: float = option(0.95, above=0, below=1)
    """The most noise level the clean sample is re-noised to (above sigma_min)."""
    step_size: float = option(0.1, above=0, at_most=1)
    """dt: the flow time of the one Euler step taken with gradients (to t = 0 where sigma <= dt)."""
    discount: bool = True
    """Weight each reward by lambda(u) = 3u / (1 + 2u) of its noise level's place u in [sigma_min, sigma_max] (False:
    weight 1)."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"direct_align.sigma_min must be below direct_align.sigma_max, got {self.sigma_min:g} and "
                f"{self.sigma_max:g}"
            )


def recovered_clean(
    noised: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, step_size: float, noise: torch.Tensor
) -> torch.Tensor:
    """Direct-Align's steps 2 and 3: the Euler step from x_sigma to s = max(sigma - dt, 0) along `velocity`, then
    the clean image recovered with the known `noise`, (x_s - s eps) / (1 - s). States (B, ...), sigma (B,)."""
    shape = (-1, *(1,) * (noised.dim() - 1))
    sigma = sigma.to(noised).view(shape)
    target = (sigma - step_size).clamp(min=0)
    stepped = noised + (target - sigma) * velocity
    return (stepped - target * noise) / (1 - target)


def discount(sigma: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """lambda(u) = 3u / (1 + 2u), u = (sigma - sigma_min) / (sigma_max - sigma_min): 0 at the least noise, 1 at the
    most."""
    u = (sigma - sigma_min) / (sigma_max - sigma_min)
    return 3 * u / (1 + 2 * u)


class DirectAlign(Trainer):
    name = "direct_align"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    needs_differentiable_reward = True
    search_space = {
        "learning_rate": Interval(1e-6, 1e-4, log=True),
        "step_size": Interval(0.02, 0.5, log=True),
        "sigma_max": Interval(0.5, 0.99),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the ODE chains, then one forward and its backward (2) per sample
        images, steps, _ = chain_work(config, generator)
        return {"nfe": images * (steps + 3), "reward_queries": images, "samples": images}

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            chain = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator)
        noise, clean = chain.latents[:, 0], chain.latents[:, -1]
        sigma = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(len(prompts), generator=self.generator)
        shape = (-1, *(1,) * (clean.dim() - 1))
        noised = (1 - sigma.to(clean).view(shape)) * clean + sigma.to(clean).view(shape) * noise
        velocity = self.policy.velocity(noised, sigma.to(clean.device), prompts)
        recovered = recovered_clean(noised, velocity, sigma, cfg.step_size, noise)
        rewards = self.reward(self.policy.decode(recovered), prompts)
        weights = discount(sigma, cfg.sigma_min, cfg.sigma_max) if cfg.discount else torch.ones_like(sigma)
        loss = -(weights.to(rewards) * rewards).mean()
        self.descend(loss, cfg.max_grad_norm)
        return {"reward": rewards.mean().item(), "loss": loss.item(), "sigma": sigma.mean().item()}
