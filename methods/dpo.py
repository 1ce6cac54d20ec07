"""`dpo`: Diffusion-DPO (Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", CVPR 2024,
arXiv 2311.12908), with its pairs ranked by the reward.

For a pair of images of one prompt, x^w preferred to x^l, both noised with the same t and noise eps, DPO's objective
bounded through the model's ELBO (the paper's eq. 14) is
  L(theta) = -E log sigmoid( -beta/2 * [ (e_theta(x^w) - e_ref(x^w)) - (e_theta(x^l) - e_ref(x^l)) ] ),
with e(x) the per-image training error of the family at (t, eps): ||eps - eps_theta(x_t, t)||^2 for a diffusion model,
||v - v_theta(x_t, t)||^2 for a rectified flow (the velocity objective, as flow models take DPO), averaged over
pixels, and the frozen base model as the reference: the loss falls as the policy denoises the preferred image better
than the reference does, relative to the other. beta = 5000 is the paper's value for SD 1.5 with that average (the
paper's beta T omega(lambda_t) with its implementation's constant).

Pairs: `pairing = online` draws them from the current policy each iteration (as D3PO and Flow-GRPO's online DPO do):
`samples_per_prompt` images of each of `prompts_per_iter` prompts, the reward's best against its worst.
`offline` draws `offline_pairs` such pairs once, from the base model, at the first step, and trains on them
throughout (the paper's setting, with the reward in place of human labels). A pair whose images the reward ties
carries no preference and is dropped. Each iteration takes `updates_per_iter` gradient steps on `batch` pairs.

Departures from the paper: the preferences come from the suite's reward, not from humans; training samples are drawn
with the deterministic sampler (each image of a prompt from its own initial noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.options import Interval, Options, option
from methods.trainer import Trainer, make_optimizer

PAIRINGS = ("online", "offline")


@dataclass(frozen=True)
class Config(Options):
    pairing: str = "online"
    """online: pairs drawn from the current policy every iteration; offline: pairs drawn once from the base model."""
    prompts_per_iter: int = option(8, at_least=1)
    """online: prompts whose pair is drawn each iteration."""
    samples_per_prompt: int = option(4, at_least=2)
    """Images drawn per prompt; its pair is the reward's best and worst of them."""
    offline_pairs: int = option(256, at_least=1)
    """offline: prompts whose pair is drawn once, at the first step."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of the drawn images; None: the model's default."""
    batch: int = option(8, at_least=1)
    """Pairs per gradient step (at most the pairs at hand)."""
    updates_per_iter: int = option(2, at_least=1)
    """Gradient steps per iteration."""
    beta: float = option(5000.0, above=0)
    """How sharply the loss rewards a better relative denoising of the preferred image."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        if self.pairing not in PAIRINGS:
            raise ValueError(f"dpo.pairing must be one of {', '.join(PAIRINGS)}; got {self.pairing!r}")


def dpo_loss(
    policy_w: torch.Tensor, reference_w: torch.Tensor, policy_l: torch.Tensor, reference_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Diffusion-DPO loss (a scalar, the mean over pairs) from each pair's per-image errors (B,) under the policy
    and the reference, and whether the policy ranks each pair as preferred (B,)."""
    margin = (policy_w - reference_w) - (policy_l - reference_l)
    return -F.logsigmoid(-beta / 2 * margin).mean(), margin < 0


class DiffusionDPO(Trainer):
    name = "dpo"
    version = "1"
    Config = Config
    families = ("diffusion", "flow")
    search_space = {"learning_rate": Interval(1e-6, 1e-4, log=True), "beta": Interval(500.0, 50_000.0, log=True)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "offline_pairs": 3, "sample_steps": 3, "batch": 2}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # drawing (the offline pool at the first step), then per update the policy's forward + backward on both
        # images of each pair and the reference's forward on both; a pair the reward ties is dropped, which the
        # first step's count assumes none is
        prompts = config.prompts_per_iter if config.pairing == "online" else config.offline_pairs
        images = prompts * config.samples_per_prompt
        pairs = min(config.batch, prompts)
        return {
            "nfe": images * (config.sample_steps or generator.default_steps)
            + config.updates_per_iter * pairs * 2 * (3 + 1),
            "reward_queries": images,
            "samples": images,
        }

    @classmethod
    def iteration_usage(cls, config: Config, generator: type) -> dict[str, float]:
        if config.pairing == "online":
            return cls.step_usage(config, generator)
        # offline: the pool was drawn at the first step; each later one only updates
        return {"nfe": config.updates_per_iter * min(config.batch, config.offline_pairs) * 2 * (3 + 1)}

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer: torch.optim.Optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy()
        self.pairs: dict | None = None  # offline: the pool, drawn at the first step

    def draw_pairs(self, prompts: int) -> dict:
        """The best and the worst of `samples_per_prompt` images of each of `prompts` train prompts: {"prompts",
        "preferred", "rejected"}, ties dropped."""
        cfg = self.config
        batch = self.prompt_batch(prompts, cfg.samples_per_prompt)
        with torch.no_grad():
            images = self.policy.sample(batch, self.sampler_steps(cfg.sample_steps), self.generator).images
            rewards = self.reward(images, batch).float().cpu().view(-1, cfg.samples_per_prompt)
        offset = torch.arange(len(rewards)) * cfg.samples_per_prompt
        best, worst = offset + rewards.argmax(dim=1), offset + rewards.argmin(dim=1)
        keep = (rewards.max(dim=1).values > rewards.min(dim=1).values).nonzero().flatten()
        return {
            "prompts": [batch[i] for i in best[keep].tolist()],
            "preferred": images[best[keep]].cpu(),
            "rejected": images[worst[keep]].cpu(),
        }

    def step(self) -> dict[str, float]:
        cfg = self.config
        if cfg.pairing == "online":
            pairs = self.draw_pairs(cfg.prompts_per_iter)
        else:
            if self.pairs is None:
                self.pairs = self.draw_pairs(cfg.offline_pairs)
            pairs = self.pairs
        stats = {"loss": [], "ranked": []}
        for _ in range(cfg.updates_per_iter):
            if not pairs["prompts"]:
                break  # every pair tied: nothing to prefer
            index = torch.randperm(len(pairs["prompts"]), generator=self.generator)[: cfg.batch]
            loss, ranked = self._update([pairs["prompts"][i] for i in index.tolist()], pairs, index)
            stats["loss"].append(loss)
            stats["ranked"].append(ranked)
        return {"pairs": float(len(pairs["prompts"])), **{k: sum(v) / len(v) for k, v in stats.items() if v}}

    def _update(self, prompts: list[str], pairs: dict, index: torch.Tensor) -> tuple[float, float]:
        preferred = pairs["preferred"][index].to(self.policy.device)
        rejected = pairs["rejected"][index].to(self.policy.device)
        # one draw of (t, noise) for all four errors: each call starts from the same generator state
        state = self.generator.get_state()

        def errors(policy, images):
            self.generator.set_state(state)
            return policy.training_errors(images, prompts, self.generator)

        self.zero_gradients()
        with torch.no_grad():
            reference_w, reference_l = errors(self.reference, preferred), errors(self.reference, rejected)
        policy_w, policy_l = errors(self.policy, preferred), errors(self.policy, rejected)
        loss, ranked = dpo_loss(policy_w, reference_w, policy_l, reference_l, self.config.beta)
        loss.backward()
        self.apply_gradients(self.config.max_grad_norm)
        return loss.item(), ranked.float().mean().item()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pairs": self.pairs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pairs = state["pairs"]
