"""`raft`: Reward rAnked FineTuning (Dong et al., "RAFT: Reward rAnked FineTuning for Generative
Foundation Model Alignment", TMLR 2023, arXiv 2304.06767).

Each iteration: sample K images for each of P train prompts, rank each prompt's K images by reward,
keep the top `keep_per_prompt`, and fine-tune on the kept set with the model's own training loss
(here the denoising loss L(theta) = E_{t, eps} ||eps - eps_theta(x_t, t, prompt)||^2), then repeat.
Objective (per iteration): min_theta sum_{(x, c) in top-k} L_denoise(theta; x, c).
Departures from the paper: ranking is per prompt (the paper ranks within a batch that shares a
prompt, the same thing for its diffusion experiments); the kept set is used for `updates_per_iter`
gradient steps and then discarded, with no replay buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, chain_work, make_optimizer
from rewards.ranking import top_k_per_group


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(16, at_least=1)
    """Distinct train prompts sampled per iteration (P)."""
    samples_per_prompt: int = option(8, at_least=1)
    """Candidates drawn per prompt (K)."""
    keep_per_prompt: int = option(1, at_least=1)
    """Top candidates per prompt kept for fine-tuning."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps used to draw candidates; None: the model's default (20 DDIM steps,
    4 consistency steps)."""
    updates_per_iter: int = option(2, at_least=1)
    """Gradient steps on each kept set (the whole kept set is one batch)."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate (fine-tuning on a few self-generated images per step drifts fast above ~5e-5)."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.keep_per_prompt <= self.samples_per_prompt:
            raise ValueError(
                f"raft.keep_per_prompt must be in [1, samples_per_prompt={self.samples_per_prompt}], "
                f"got {self.keep_per_prompt}"
            )


class RAFT(Trainer):
    name = "raft"
    version = "1"
    Config = Config
    search_space = {"learning_rate": Interval(3e-6, 3e-4, log=True), "keep_per_prompt": Interval(1, 4)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "updates_per_iter": 2}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, _ = chain_work(config, generator)
        kept = config.prompts_per_iter * config.keep_per_prompt
        return {
            "nfe": images * steps + config.updates_per_iter * kept * generator.loss_nfe,
            "reward_queries": images,
            "samples": images,
        }

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            images = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator).images
            rewards = self.reward(images, prompts).float()
        keep = top_k_per_group(rewards.cpu(), len(prompts) // cfg.samples_per_prompt, cfg.keep_per_prompt)
        kept_images, kept_prompts = images[keep], [prompts[i] for i in keep.tolist()]
        for _ in range(cfg.updates_per_iter):
            loss = self.policy.loss(kept_images, kept_prompts, self.generator)
            self.descend(loss, cfg.max_grad_norm)
        return {"reward": rewards.mean().item(), "kept_reward": rewards[keep].mean().item(), "loss": loss.item()}
