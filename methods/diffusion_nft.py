"""`diffusion_nft`: DiffusionNFT (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv 2509.16117).

Reinforcement on the forward process, with no sampler likelihoods: the old policy v_old draws K clean samples x_0 of
each prompt with any solver, and the reward becomes an optimality probability,
  r = 1/2 + 1/2 clip( (R - mean_c R) / Z, -1, 1 ),   Z the standard deviation of R over the iteration's batch,
(mean_c over the prompt's group). With the forward process x_t = (1 - t) x_0 + t eps and its velocity v = eps - x_0,
the implicit positive and negative policies
  v+_theta = (1 - beta) v_old + beta v_theta,    v-_theta = (1 + beta) v_old - beta v_theta
are trained by the flow-matching loss, each on its side of the reward,
  L(theta) = E_{c, x_0 ~ pi_old, t, eps} [ r ||v+_theta(x_t) - v||^2 + (1 - r) ||v-_theta(x_t) - v||^2 ],
whose minimiser moves v_theta from v_old towards the positive samples and away from the negative ones (the paper's
Theorem: v* = v_old + (2 / beta) Delta, Delta the direction from v_old to the positive policy). After each
iteration the old policy follows softly, theta_old <- eta_i theta_old + (1 - eta_i) theta, eta_i =
min(eta_rate * i, eta_max) at iteration i (eta = 0: the old policy is the current one, fully on-policy).

The flow family only: the implicit policies are written for the velocity the forward process regresses (a diffusion
model's noise prediction maps to a velocity, but its training loss and sampler are not the forward process this
loss is written for, so it is not offered there).
Departures from the paper: no classifier-free guidance anywhere (the paper's CFG-free setting is this suite's only
one); t is uniform and every (image, t) term has weight 1 (the paper's adaptive x_0-form weighting is not built);
log-probabilities are never needed. v_old is evaluated by loading theta_old's weights into the policy for the
iteration's sampling and its no-grad passes (the same network, so LoRA policies need no second copy), then
restoring theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """K: the old policy's samples of each prompt, whose rewards are centred on their mean."""
    sample_steps: int | None = option(10, at_least=1)
    """Steps of the old policy's deterministic sampler (any solver will do; 10, as Flow-GRPO's training chains);
    None: the model's default."""
    beta: float = option(1.0, above=0)
    """How far the implicit policies stand from v_old along v_theta - v_old."""
    eta_rate: float = option(0.001, at_least=0)
    """The old policy's lag grows by this much per iteration ..."""
    eta_max: float = option(0.5, at_least=0, below=1)
    """... up to this (0: the old policy is the current one at every iteration)."""
    inner_epochs: int = option(1, at_least=1)
    """Passes over each iteration's samples, each with its own (t, eps)."""
    minibatch: int = option(16, at_least=1)
    """Samples per optimizer step."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def optimality_probability(rewards: torch.Tensor, groups: int) -> torch.Tensor:
    """r in [0, 1] of group-major rewards (G * K,): centred within each prompt's group, scaled by the batch's std,
    clipped to [-1, 1], mapped to [0, 1]. A batch of equal rewards gives 1/2 everywhere."""
    centred = (rewards.view(groups, -1) - rewards.view(groups, -1).mean(dim=1, keepdim=True)).flatten()
    scale = rewards.std(unbiased=False)
    return 0.5 + 0.5 * (centred / (scale + 1e-6)).clamp(-1.0, 1.0)


def implicit_policies(v_theta: torch.Tensor, v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(v+, v-) = ((1 - beta) v_old + beta v_theta, (1 + beta) v_old - beta v_theta)."""
    return (1 - beta) * v_old + beta * v_theta, (1 + beta) * v_old - beta * v_theta


def nft_loss(
    v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor, beta: float
) -> torch.Tensor:
    """L(theta) on a batch: velocities and target (B, ...), r (B,); per-image squared errors averaged over
    dimensions, then over the batch."""
    positive, negative = implicit_policies(v_theta, v_old, beta)
    error_positive = (positive - target).pow(2).flatten(1).mean(dim=1)
    error_negative = (negative - target).pow(2).flatten(1).mean(dim=1)
    r = r.to(error_positive)
    return (r * error_positive + (1 - r) * error_negative).mean()


def follow(old: dict, new: dict, eta: float) -> dict:
    """theta_old <- eta theta_old + (1 - eta) theta, over a state dict's floating-point tensors (others: the new)."""
    return {k: eta * old[k] + (1 - eta) * v if v.is_floating_point() else v for k, v in new.items()}


class DiffusionNFT(Trainer):
    name = "diffusion_nft"
    version = "1"
    Config = Config
    families = ("flow",)
    search_space = {"learning_rate": Interval(3e-6, 3e-4, log=True), "beta": Interval(0.1, 10.0, log=True)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the old policy's chains, then per epoch its no-grad velocity and the policy's forward + backward
        images = config.prompts_per_iter * config.samples_per_prompt
        steps = config.sample_steps or generator.default_steps
        return {
            "nfe": images * steps + config.inner_epochs * images * (1 + 3),
            "reward_queries": images,
            "samples": images,
        }

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.old_state = policy.state_dict()  # theta_old: the base model at first
        self.iteration = 0

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        current = self.policy.state_dict()
        self.policy.load_state_dict(self.old_state)  # the old policy samples, and gives v_old
        with torch.no_grad():
            chain = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator)
            rewards = self.reward(chain.images, prompts).float().cpu()
            clean = chain.latents[:, -1]
            epochs = []
            for _ in range(cfg.inner_epochs):
                x_t, t, target = self.policy.flow_matching_point(clean, self.generator)
                epochs.append((x_t, t, target, self.policy.velocity(x_t, t, prompts)))
        self.policy.load_state_dict(current)
        r = optimality_probability(rewards, len(prompts) // cfg.samples_per_prompt)
        losses = []
        for x_t, t, target, v_old in epochs:
            for index in self.minibatches(len(prompts), cfg.minibatch):
                batch_prompts = [prompts[i] for i in index.tolist()]
                v_theta = self.policy.velocity(x_t[index], t[index], batch_prompts)
                loss = nft_loss(v_theta, v_old[index], target[index], r[index], cfg.beta)
                self.descend(loss, cfg.max_grad_norm)
                losses.append(loss.item())
        self.iteration += 1
        eta = min(cfg.eta_rate * self.iteration, cfg.eta_max)
        self.old_state = follow(self.old_state, self.policy.state_dict(), eta)
        return {"reward": rewards.mean().item(), "loss": sum(losses) / len(losses), "eta": eta}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "old": self.old_state, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old_state, self.iteration = state["old"], state["iteration"]
