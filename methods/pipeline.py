"""`pipeline`: the classic RLHF pipeline on the annotator's feedback (Christiano et al. 2017; Ouyang et al. 2022;
for diffusion models, Lee et al. 2023 and ImageReward's ReFL): first learn a reward model from preference pairs,
then fine-tune the generator against it with a reward-driven method, DDPO (PPO) by default.

Stage 1: r_phi = argmin_phi - sum_(a, b, c, y) log sigmoid(+-(r_phi(a, c) - r_phi(b, c))) (Bradley-Terry) over
`preference_pairs` labelled pairs of the base model's samples. Stage 2: the method `rl_method` (any reward-driven
method of the registry, with its default config but for `rl_options`) maximises r_phi, frozen, for the rest of the
budget.
Demonstrations are not used: that is the pipeline's point of comparison with `aihf` and `sft`.
Departures: the reward model is trained from scratch (no pretrained backbone exists in this world), and stage 2
runs a registered method rather than a copy of it (composition: the one method that builds another).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from methods.options import Interval, Options, option, parse_option
from methods.toolkit.preferences import collect_preferences, fit_bradley_terry, new_reward_model, preference_accuracy
from methods.trainer import Trainer, make_optimizer
from rewards.learned import LearnedReward

RL_METHODS = ("ddpo", "rocm", "raft")


@dataclass(frozen=True)
class Config(Options):
    preference_pairs: int = option(300, at_least=1)
    """Labelled pairs the reward model learns from (the label budget)."""
    collect_steps: int | None = option(None, at_least=1)
    """Sampler steps of the base-model samples that are compared; None: the model's default."""
    reward_steps: int = option(300, at_least=1)
    """Minibatch steps of reward-model training."""
    reward_batch: int = option(64, at_least=1)
    """Pairs per reward-model step."""
    reward_learning_rate: float = option(1e-3, above=0)
    """AdamW learning rate of the reward model."""
    rl_method: str = "ddpo"
    """The reward-driven method of stage 2: ddpo, rocm or raft, with its default config but for rl_options."""
    rl_options: str = ""
    """Comma-separated FIELD=VALUE options of stage 2's method, e.g. prompts_per_iter=4,minibatch=4 (none: none)."""

    def __post_init__(self):
        super().__post_init__()
        if self.rl_method not in RL_METHODS:
            raise ValueError(f"pipeline.rl_method must be one of {', '.join(RL_METHODS)}; got {self.rl_method!r}")
        self.rl_config()  # its options checked now, not when stage 2 starts

    def rl_config(self):
        """Stage 2's method's Config with `rl_options` applied."""
        from methods import METHODS  # the registry imports this module

        defaults = METHODS[self.rl_method].Config()
        fields = {f.name: f for f in dataclasses.fields(defaults)}
        options = {}
        for pair in filter(None, (p.strip() for p in self.rl_options.split(","))):
            name, _, value = pair.partition("=")
            if name not in fields or not value:
                raise ValueError(
                    f"pipeline.rl_options: expected FIELD=VALUE with FIELD an option of "
                    f"{self.rl_method} ({', '.join(sorted(fields))}), got {pair!r}"
                )
            try:
                options[name] = parse_option(value, str(fields[name].type), fields[name].metadata.get("bounds"))
            except ValueError as error:
                raise ValueError(f"pipeline.rl_options: {name}: {error}") from None
        return dataclasses.replace(defaults, **options)


class RewardModelPipeline(Trainer):
    name = "pipeline"
    # 2: stage 2's ddpo re-evaluates its trained steps batched (its version 4: float sums reordered)
    version = "2"
    Config = Config
    learns_from_feedback = True
    data_parallel = False  # its preference dataset is collected once, at the start, by one process
    families = ("diffusion", "consistency")
    compared_on = ()  # AIHF's baseline: compared with it in the feedback suite
    search_space = {
        "reward_learning_rate": Interval(1e-4, 1e-2, log=True),
        "reward_steps": Interval(100, 1000, log=True),
    }
    small_config = {
        "preference_pairs": 6,
        "collect_steps": 4,
        "reward_steps": 3,
        "rl_options": "prompts_per_iter=2,samples_per_prompt=3,sample_steps=3,minibatch=4",
    }

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the first step collects and labels the pairs, fits the reward model, and takes stage 2's first step, which
        # queries the learned reward, not the annotator's
        from methods import METHODS  # the registry imports this module

        steps = config.collect_steps or generator.default_steps
        rl = METHODS[config.rl_method].step_usage(config.rl_config(), generator)
        return {
            "nfe": 2 * config.preference_pairs * steps + rl["nfe"],
            "samples": 2 * config.preference_pairs + rl["samples"],
            "labels": config.preference_pairs,
        }

    @classmethod
    def iteration_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # stage 2's steps, against the learned reward (no annotator queries or labels)
        from methods import METHODS  # the registry imports this module

        rl = METHODS[config.rl_method].iteration_usage(config.rl_config(), generator)
        return {"nfe": rl["nfe"], "samples": rl["samples"]}

    def __init__(self, policy, feedback, prompts, config: Config, seed: int):
        super().__init__(policy, feedback, prompts, config, seed)
        self.reward_model = new_reward_model(feedback, policy, seed)
        self.reward_optimizer = make_optimizer(self.reward_model.parameters(), config.reward_learning_rate)
        self.rl = None  # stage 2's trainer, built once the reward model is fitted

    def _start_rl(self) -> None:
        from methods import METHODS  # the registry imports this module

        method = METHODS[self.config.rl_method]
        self.rl = method(
            self.policy, LearnedReward(self.reward_model), self.prompts, self.config.rl_config(), self.seed
        )
        self.rl.generator = self.generator  # one random stream for the whole run
        self.rl.gradient_norms = self.gradient_norms  # one record of the run's optimizer steps

    def step(self) -> dict[str, float]:
        if self.rl is not None:
            return self.rl.step()
        cfg = self.config
        preferences = collect_preferences(
            self.policy,
            self.reward,
            self.prompts,
            cfg.preference_pairs,
            self.sampler_steps(cfg.collect_steps),
            self.seed,
        )
        loss = fit_bradley_terry(
            self.reward_model, self.reward_optimizer, preferences, cfg.reward_steps, cfg.reward_batch, self.generator
        )
        self._start_rl()
        return {
            "reward_model_loss": loss,
            "reward_model_train_acc": preference_accuracy(self.reward_model, preferences),
            **self.rl.step(),
        }

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "reward_model": self.reward_model.state_dict()}
        if self.rl is not None:
            state["rl"] = self.rl.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.reward_model.load_state_dict(state["reward_model"])
        if "rl" in state:
            self._start_rl()
            self.rl.load_state_dict(state["rl"])
