"""The Trainer interface every method implements. The harness owns the loop, the meter and evaluation.

A method file holds: a docstring (paper, objective, departures from the paper), a frozen `Config`
dataclass with a docstring per field, pure loss functions, then a `Trainer` subclass. The harness
builds it with a metered policy and reward, calls `step()` until the budget is spent and calls
`generate()` to evaluate it at budget milestones.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import ClassVar, Protocol

import torch

from methods.options import Search
from models.policy import Policy

PROCESS_SEED_STRIDE = 1_000_003
"""Process r of a data-parallel run draws from seed + r * stride: its own samples, and process 0 the single-process
ones."""


class Parallel(Protocol):
    """This process's place in a data-parallel run of one trainer over `world_size` processes, as a method sees it
    (bench.parallel.DataParallel is the torch.distributed one): each process samples its share of every batch from
    its own random stream, and gradients are averaged once per optimizer step, so the effective batch is the
    config's whatever the number of processes, and the parameters stay identical on every process."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def share(self, total: int, what: str) -> int:
        """This process's part of a batch of `total` (`what` names the option in the error if it does not split)."""
        ...

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """The mean of every process's gradients, in each process."""
        ...

    def broadcast(self, parameters: list[torch.nn.Parameter]) -> None:
        """The main process's values of `parameters`, in each process."""
        ...

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's (B, ...) tensor, concatenated rank-major: (world_size * B, ...)."""
        ...

    def local(self, gathered: torch.Tensor) -> torch.Tensor:
        """This process's rows of a gathered tensor."""
        ...


class SingleProcess:
    """A run on one process: the whole batch is this process's, and there is nothing to exchange."""

    rank = 0
    world_size = 1

    def share(self, total: int, what: str) -> int:
        return total

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        pass

    def broadcast(self, parameters: list[torch.nn.Parameter]) -> None:
        pass

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def local(self, gathered: torch.Tensor) -> torch.Tensor:
        return gathered


class Trainer(ABC):
    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type]
    trains: ClassVar[bool] = True
    """False for inference-time methods: the harness runs no training loop, only `generate`."""
    needs_differentiable_reward: ClassVar[bool] = False
    learns_from_feedback: ClassVar[bool] = False
    """True for methods that learn from an annotator's labels and demonstrations: their `reward` argument is
    then a rewards.feedback.Feedback, which hides the reward's values."""
    families: ClassVar[tuple[str, ...]] = ("diffusion", "consistency", "flow")
    """The generator families (Policy.family) the method can fine-tune; the first is its default."""
    compared_on: ClassVar[tuple[str, ...] | None] = None
    """The families on which the leaderboard suites (bench/experiments/suite.py: leaderboard_entries) fine-tune it:
    None for every family it can; fewer where the others add cost without a question (a method bound to its paper's
    family, or a baseline compared in a suite of its own)."""
    data_parallel: ClassVar[bool] = True
    """False for methods that cannot split their work over processes (see `distribute`)."""
    search_space: ClassVar[dict[str, Search]] = {}
    """The options tuning searches (bench tune) and over what range: the learning rate always, and the regularization
    weight, clip range, temperature or noise level where the method has them; each range within the option's valid
    one and holding its default (the paper's value), checked when the method is registered."""
    model_defaults: ClassVar[Mapping[str, Mapping[str, object]]] = {}
    """An option whose default is None (the model's own): its value per generator family, which a tune's first trial
    (the defaults) runs with."""
    small_config: ClassVar[dict[str, object]] = {}
    """Options (over Config's defaults) under which one step takes well under a second on the tiny worlds: what the
    contract tests (tests/test_methods.py) train with."""
    parallel: Parallel = SingleProcess()

    def __init__(self, policy: Policy, reward, prompts: list[str], config, seed: int):
        self.policy = policy
        self.reward = reward
        self.prompts = list(prompts)
        self.config = config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.gradient_norms: list[float] = []
        """The norm of each optimizer step's gradient before clipping, as apply_gradients took them: the harness
        reads them after every step() for the run's diagnostics, and empties the list in place."""

    @classmethod
    @abstractmethod
    def step_usage(cls, config, generator: type) -> dict[str, float]:
        """What the first `step()` under `config` costs, worked out from the config alone, on a generator of class
        `generator` (a ChainPolicy: its `default_steps` and `loss_nfe`): nfe, reward_queries, samples and labels
        (missing: 0). The contract tests hold the harness's meter to it, so a method cannot under-report."""

    @classmethod
    def iteration_usage(cls, config, generator: type) -> dict[str, float]:
        """What each later `step()` costs (as `step_usage`): the same, unless the first step also does one-off work
        (collecting a dataset or labels). A milestone is passed by less than one step's cost, so the suite's budget
        check reads both; the contract tests hold the meter to this too."""
        return cls.step_usage(config, generator)

    @classmethod
    def incompatibility(cls, reward_cls, budget_unit: str) -> str | None:
        """Why this method cannot run with this reward (its class, or the Combination of a reward spec naming several:
        rewards/combined.py) or budget unit, or None if it can."""
        if cls.needs_differentiable_reward and not reward_cls.differentiable:
            return "needs a differentiable reward"
        return None

    def distribute(self, parallel: Parallel) -> None:
        """Makes this trainer process `parallel.rank` of a data-parallel run; call before the first step."""
        if parallel.world_size > 1 and not self.data_parallel:
            raise ValueError(
                f"{self.name} cannot run data-parallel (it collects its feedback dataset once); run it on one process"
            )
        self.parallel = parallel
        if parallel.world_size > 1:
            self.generator.manual_seed(self.seed + PROCESS_SEED_STRIDE * parallel.rank)
            parallel.broadcast(self.trained_parameters())

    def prompt_batch(self, groups: int, per_group: int) -> list[str]:
        """This process's share of an iteration's prompts: `groups` train prompts over all processes, each
        repeated `per_group` times (group-major)."""
        return prompt_groups(
            self.prompts, self.parallel.share(groups, f"{self.name}.prompts_per_iter"), per_group, self.generator
        )

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter the method's optimizer updates: the policy's, and any the method trains beside it (a value
        network in the optimizer's parameter groups), which data-parallel processes must keep identical too. Before an
        optimizer exists (and for methods that never train): the policy's trainable parameters."""
        if self.optimizer is None:
            return self.policy.trainable_parameters()
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _trained_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise TypeError(f"{self.name} made no optimizer: it cannot take a gradient step")
        return self.optimizer

    def zero_gradients(self) -> None:
        """Drops the accumulated gradients before a new optimizer step's backward passes."""
        self._trained_optimizer().zero_grad(set_to_none=True)

    def minibatches(
        self, count: int, minibatch: int, option: str = "minibatch", order: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """The indices of `count` items in an order drawn from `self.generator` (or the `order` given, drawn so
        before), in this process's shares of `minibatch` (the method's `option` of that name: its error names it if
        it does not split over the processes)."""
        order = torch.randperm(count, generator=self.generator) if order is None else order
        size = self.parallel.share(minibatch, f"{self.name}.{option}")
        for start in range(0, count, size):
            yield order[start : start + size]

    def descend(self, loss: torch.Tensor, max_grad_norm: float) -> None:
        """One optimizer step down `loss`: its gradients alone, then `apply_gradients`."""
        self.zero_gradients()
        loss.backward()
        self.apply_gradients(max_grad_norm)

    def apply_gradients(self, max_grad_norm: float) -> None:
        """One optimizer step on the accumulated gradients of every trained parameter: averaged over processes,
        clipped, applied."""
        parameters = self.trained_parameters()
        self.parallel.average_gradients(parameters)
        self.gradient_norms.append(float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)))
        self._trained_optimizer().step()

    def sampler_steps(self, configured: int | None) -> int:
        """A config's `sample_steps`, where None means the model's own default."""
        return self.policy.default_steps if configured is None else configured

    @abstractmethod
    def step(self) -> dict[str, float]:
        """One unit of training work (e.g. one sample-and-update iteration); returns scalar diagnostics."""

    def generate(self, prompts: list[str], steps: int, generator: torch.Generator, budget) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] for evaluation. `budget` is the milestone's Budget, which only
        inference-time methods need. Evaluation uses the deterministic sampler."""
        with torch.no_grad():
            return self.policy.sample(prompts, steps, generator).images

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly where it stopped."""
        state = {"policy": self.policy.state_dict(), "generator": self.generator.get_state()}
        if self.optimizer is not None:
            # a snapshot: the optimizer hands out its live moment tensors, which a loader would then share
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.generator.set_state(state["generator"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def chain_work(config, generator: type) -> tuple[int, int, int]:
    """(images, sampler steps, stochastic steps) of one iteration's sampling under a config with prompts_per_iter,
    samples_per_prompt and sample_steps: every DDIM step (eta > 0) is stochastic, every consistency or flow step but
    the deterministic last one."""
    images = config.prompts_per_iter * config.samples_per_prompt
    steps = config.sample_steps or generator.default_steps
    return images, steps, steps - (generator.family in ("consistency", "flow"))


def prompt_groups(prompts: list[str], groups: int, per_group: int, generator: torch.Generator) -> list[str]:
    """`groups` prompts drawn uniformly with replacement, each repeated `per_group` times (group-major)."""
    index = torch.randint(0, len(prompts), (groups,), generator=generator)
    return [prompts[i] for i in index.tolist() for _ in range(per_group)]


def make_optimizer(parameters, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
