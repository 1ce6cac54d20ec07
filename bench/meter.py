"""Compute accounting owned by the harness: methods only ever see metered policies and rewards.

Units (budgets are expressed in any of them but labels):
  nfe             network function evaluations, per image: a forward pass of a generator network on
                  B images costs B, a backward pass through it 2B (every generator network a method
                  can reach is hooked, reference copies included: `frozen_copy` deep-copies the hooks
                  along with the module, or returns a network of its own, which the meter then watches);
  reward_queries  images scored by the reward;
  samples         images produced by the sampler;
  labels          human-feedback labels (preference pairs) an annotator gave (rewards/feedback.py); recorded,
                  not a run budget: the methods collect their labels once, at the start (their
                  `preference_pairs` is the label budget), so a run limited by labels would never end;
  wall_s          wall-clock seconds, timed by the runner around each training step.
Usage is kept in accounts: `train` (what the budget limits) and `eval` (the harness's evaluation;
for inference-time methods such as best-of-N this is their whole cost).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.sampler import DETERMINISTIC, Sampler
from rewards.combined import reward_components

WATCHED = "_watched_by_meter"
"""The attribute that marks a module as watched, so that a reference sharing or copying a watched network is not
counted twice."""


@dataclass
class Usage:
    nfe: float = 0.0
    reward_queries: float = 0.0
    samples: float = 0.0
    labels: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Meter:
    def __init__(self):
        self.accounts = {"train": Usage(), "eval": Usage()}
        self._account = "train"
        self._scores: list[torch.Tensor] = []

    def note_scores(self, scores: torch.Tensor) -> None:
        """Keeps the scores of a training reward query, for the step's diagnostics (take_scores)."""
        if self._account == "train":
            self._scores.append(scores.detach().float().flatten().cpu())

    def take_scores(self) -> torch.Tensor:
        """Every score the training's reward queries returned since the last call, in one (N,) vector (N = 0 where
        there were none), and forgets them."""
        scores, self._scores = self._scores, []
        return torch.cat(scores) if scores else torch.zeros(0)

    @property
    def usage(self) -> Usage:
        return self.accounts[self._account]

    @contextmanager
    def charging(self, account: str):
        """Charges all work inside the block to `account`."""
        previous, self._account = self._account, account
        try:
            yield
        finally:
            self._account = previous

    @contextmanager
    def timed(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.usage.wall_s += time.monotonic() - start

    def watch(self, module: nn.Module) -> None:
        """Counts every forward (B) and every backward (2B) of `module` from now on; a module watched already (a deep
        copy of a watched one keeps its hook) is left as it is."""
        if getattr(module, WATCHED, False):
            return
        setattr(module, WATCHED, True)
        meter = self  # a closure, not a bound method: deepcopy of the module must keep this meter

        def count(_module, _args, output):
            batch = output.shape[0]
            meter.usage.nfe += batch
            if output.requires_grad:

                def count_backward(grad):
                    meter.usage.nfe += 2 * batch

                output.register_hook(count_backward)

        module.register_forward_hook(count)

    def state_dict(self) -> dict:
        return {name: usage.as_dict() for name, usage in self.accounts.items()}

    def load_state_dict(self, state: dict) -> None:
        self.accounts = {name: Usage(**usage) for name, usage in state.items()}

    def count_labels(self, n: int) -> None:
        self.usage.labels += n


class MeteredPolicy:
    """A policy whose networks are watched and whose samples are counted; otherwise the same policy."""

    def __init__(self, policy, meter: Meter):
        self._policy = policy
        self._meter = meter
        meter.watch(policy.network)

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def sample(self, prompts, steps, generator, sampler: Sampler = DETERMINISTIC, **kwargs):
        trajectory = self._policy.sample(prompts, steps, generator, sampler, **kwargs)
        self._meter.usage.samples += len(prompts)
        return trajectory

    def frozen_copy(self) -> MeteredPolicy:
        """The reference, its network watched: the same modules, a deep copy (which keeps the hook) or a network of its
        own (a full fine-tune's base denoiser), which is watched from now on."""
        return MeteredPolicy(self._policy.frozen_copy(), self._meter)


class MeteredReward:
    """A reward whose queries are counted; exposes the wrapped reward's name, version and flags."""

    def __init__(self, reward, meter: Meter):
        self._reward = reward
        self._meter = meter

    def __getattr__(self, name):
        return getattr(self._reward, name)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self._meter.usage.reward_queries += len(images)
        scores = self._reward(images, prompts)
        self._meter.note_scores(scores)
        return scores

    def components(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Each term's scores of a combined reward (rewards/combined.py), or the one reward's under its name: the same
        queries as a call, whose scores (the weighted sum of the terms) the meter keeps as a call's."""
        self._meter.usage.reward_queries += len(images)
        terms = reward_components(self._reward, images, prompts)
        combine = getattr(self._reward, "combine", None)
        self._meter.note_scores(combine(terms) if combine else next(iter(terms.values())))
        return terms
