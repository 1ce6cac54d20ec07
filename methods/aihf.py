"""`aihf`: Alignment with Integrated Human Feedback, reward and policy learned jointly from demonstrations and
preferences (Li et al., "Learning Reward and Policy Jointly from Demonstration and Preference Improves
Alignment", arXiv 2406.06874), brought here to diffusion models, where it has not been published.

The paper's single stage replaces SFT -> reward modelling -> RL by one objective over a reward r_phi and the
policy pi_theta that is optimal for it under a KL anchor, pi_theta ~ pi_ref exp(r_phi / tau):
  max_phi  w * E_demo[log pi_{theta(phi)}(x | c)] + (1 - w) * E_pref[log sigmoid(r_phi(x_win, c) - r_phi(x_lose, c))],
whose demonstration term has the maximum-entropy IRL gradient w * (E_demo[grad r_phi] - E_{pi_theta}[grad r_phi]);
the two are coupled by alternating a reward step and a policy step on each iteration's fresh samples.
Adaptation to diffusion, every piece of it:
  - demonstration likelihood: through the model's own training loss (the denoising ELBO), both in the policy's
    objective and, via the IRL gradient, in the reward's (demonstrations against the policy's current samples);
  - the policy step: reward-weighted maximum likelihood on its own samples, weights softmax(z / tau) of the
    learned reward standardized over the batch (the projection of pi_ref exp(r / tau) onto the model family, as
    in ORW-CFM), mixed with the demonstrations' loss:
      L(theta) = w * L_denoise(demo) + (1 - w) * sum_i softmax(z / tau)_i L_denoise(x_i);
  - the reward step: L(phi) = w * (mean r(x_i) - mean r(demo) + l2 * (mean r(demo)^2 + mean r(x_i)^2))
                             + (1 - w) * BradleyTerry(pairs),
    the l2 term keeping the IRL term's scores bounded (a discriminator between data and samples otherwise
    grows without limit);
  - preferences are a dataset of `preference_pairs` base-model pairs collected at the start, as the pipeline's are,
    and the reward is warmed up on them (and the demonstrations) before the first policy step.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.preferences import Preferences, collect_preferences, new_reward_model, preference_accuracy
from methods.toolkit.weightings import reward_weights
from methods.trainer import Trainer, chain_work, make_optimizer
from rewards.learned import bradley_terry_loss


@dataclass(frozen=True)
class Config(Options):
    preference_pairs: int = option(300, at_least=1)
    """Labelled pairs of base-model samples (the label budget)."""
    demo_weight: float = option(0.5, at_least=0, at_most=1)
    """w: the demonstrations' share of both objectives; 1 - w goes to the preferences."""
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=1)
    """Samples per prompt drawn from the current policy each iteration."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of those samples and of the preference pairs; None: the model's default."""
    demo_batch: int = option(32, at_least=1)
    """Demonstrations per step."""
    tau: float = option(1.0, above=0)
    """Temperature of the policy step's weights, in units of the batch's learned-reward std."""
    updates_per_iter: int = option(2, at_least=1)
    """Policy gradient steps per iteration."""
    reward_updates_per_iter: int = option(4, at_least=0)
    """Reward gradient steps per iteration (one preference minibatch of `demo_batch` pairs each)."""
    warmup_reward_steps: int = option(200, at_least=0)
    """Reward steps before the first policy step, against the base model's samples."""
    reward_l2: float = option(0.1, at_least=0)
    """Weight of the squared scores that bound the IRL term."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate of the policy."""
    reward_learning_rate: float = option(1e-3, above=0)
    """AdamW learning rate of the reward model."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold of the policy (L2 norm)."""


def reward_objective(
    demo_scores: torch.Tensor,
    sample_scores: torch.Tensor,
    win: torch.Tensor,
    lose: torch.Tensor,
    demo_weight: float,
    l2: float,
) -> torch.Tensor:
    """The reward step's loss: the IRL term on demonstration and policy scores (B,), (B',) plus the Bradley-Terry
    term on scores of the preferred and the other image of each pair (P,), (P,)."""
    irl = sample_scores.mean() - demo_scores.mean() + l2 * ((demo_scores**2).mean() + (sample_scores**2).mean())
    preference = bradley_terry_loss(win, lose, torch.ones_like(win))
    return demo_weight * irl + (1 - demo_weight) * preference


class AIHF(Trainer):
    name = "aihf"
    version = "1"
    Config = Config
    learns_from_feedback = True
    data_parallel = False  # its preference dataset is collected once, at the start, by one process
    compared_on = ("diffusion",)  # the feedback suite studies it further, on the diffusion model
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "reward_learning_rate": Interval(1e-4, 1e-2, log=True),
        "demo_weight": Interval(0.0, 1.0),
        "tau": Interval(0.1, 10.0, log=True),
    }
    small_config = {
        "prompts_per_iter": 2,
        "samples_per_prompt": 3,
        "sample_steps": 3,
        "preference_pairs": 6,
        "demo_batch": 4,
        "warmup_reward_steps": 2,
        "reward_updates_per_iter": 1,
        "updates_per_iter": 1,
    }

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the first step also samples and labels the preference pairs; each policy step trains on the
        # demonstrations and on the samples
        images, steps, _ = chain_work(config, generator)
        pairs = 2 * config.preference_pairs
        return {
            "nfe": images * steps
            + pairs * steps
            + config.updates_per_iter * (config.demo_batch + images) * generator.loss_nfe,
            "samples": images + pairs,
            "labels": config.preference_pairs,
        }

    @classmethod
    def iteration_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the preference pairs are sampled and labelled once
        images, steps, _ = chain_work(config, generator)
        return {
            "nfe": images * steps + config.updates_per_iter * (config.demo_batch + images) * generator.loss_nfe,
            "samples": images,
        }

    def __init__(self, policy, feedback, prompts, config: Config, seed: int):
        super().__init__(policy, feedback, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reward_model = new_reward_model(feedback, policy, seed)
        self.reward_optimizer = make_optimizer(self.reward_model.parameters(), config.reward_learning_rate)
        self.demo_images, self.demo_prompts = feedback.demonstrations
        self.preferences = None  # collected on the first step, from the base model

    def _demos(self) -> tuple[torch.Tensor, list[str]]:
        index = torch.randint(0, len(self.demo_prompts), (self.config.demo_batch,), generator=self.generator)
        return self.demo_images[index], [self.demo_prompts[i] for i in index.tolist()]

    def _reward_step(self, samples: torch.Tensor, sample_prompts: list[str]) -> float:
        cfg = self.config
        demos, demo_prompts = self._demos()
        a, b, pair_prompts, labels = self.preferences.batch(cfg.demo_batch, self.generator)
        preferred = labels[:, None, None, None] > 0.5
        win, lose = torch.where(preferred, a, b), torch.where(preferred, b, a)
        loss = reward_objective(
            self.reward_model(demos, demo_prompts),
            self.reward_model(samples, sample_prompts),
            self.reward_model(win, pair_prompts),
            self.reward_model(lose, pair_prompts),
            cfg.demo_weight,
            cfg.reward_l2,
        )
        self.reward_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.reward_optimizer.step()
        return loss.item()

    def step(self) -> dict[str, float]:
        cfg = self.config
        steps = self.sampler_steps(cfg.sample_steps)
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            samples = self.policy.sample(prompts, steps, self.generator).images.cpu()
        stats = {}
        if self.preferences is None:
            self.preferences = collect_preferences(
                self.policy, self.reward, self.prompts, cfg.preference_pairs, steps, self.seed
            )
            for _ in range(cfg.warmup_reward_steps):
                self._reward_step(samples, prompts)
        for _ in range(cfg.reward_updates_per_iter):
            stats["reward_loss"] = self._reward_step(samples, prompts)
        with torch.no_grad():
            scores = self.reward_model(samples, prompts).cpu()  # batch statistics, on the CPU like the samples
        weights = reward_weights(scores, "exp", cfg.tau)
        for _ in range(cfg.updates_per_iter):
            demos, demo_prompts = self._demos()
            loss = cfg.demo_weight * self.policy.loss(demos, demo_prompts, self.generator) + (
                1 - cfg.demo_weight
            ) * self.policy.loss(samples, prompts, self.generator, weights)
            self.descend(loss, cfg.max_grad_norm)
        return {
            **stats,
            "policy_loss": loss.item(),
            "learned_reward": scores.mean().item(),
            "preference_acc": preference_accuracy(self.reward_model, self.preferences),
            "effective_samples": (1 / (weights**2).sum()).item(),
        }

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "reward_model": self.reward_model.state_dict(),
            "reward_optimizer": copy.deepcopy(self.reward_optimizer.state_dict()),
            # plain tensors and strings, so that a checkpoint loads without unpickling objects
            "preferences": None if self.preferences is None else asdict(self.preferences),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.reward_model.load_state_dict(state["reward_model"])
        self.reward_optimizer.load_state_dict(state["reward_optimizer"])
        self.preferences = None if state["preferences"] is None else Preferences(**state["preferences"])
