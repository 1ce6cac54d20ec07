"""How a chain's steps are drawn: the dynamics they follow, named by what they are, their noise level, and the window
of steps that are stochastic (the others take the deterministic ODE step). A policy's `sample` takes a Sampler; its
family says which dynamics it offers (ChainPolicy.dynamics, the first its own) and implements them in its
`transition_from` (models/diffusion.py's DDIM step, models/consistency.py, models/flow.py's path and SDEs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DYNAMICS = {
    "ddim": "DDIM's step with stochasticity eta: 0 the ODE's deterministic step, 1 DDPM's posterior (a diffusion "
    "model's; on a flow model the same family written for its straight path, which keeps its marginals)",
    "consistency": "the multistep consistency sampler: the predicted clean state noised to the next time by the "
    "schedule (its noise is the schedule's: the noise level is not read)",
    "flow-sde": "the reverse-time SDE with the flow ODE's marginals at sigma_t = a sqrt(t / (1 - t)), noise level a "
    "(Flow-GRPO's sampler)",
    "dance-sde": "the same SDE at a constant sigma_t = eta, noise level eta (DanceGRPO's sampler)",
    "cps": "coefficients-preserving sampling (Wang and Yu 2025, arXiv 2509.05952): the predicted clean image and noise "
    "recombined with the path's own coefficients at the next time, a share sin(eta pi / 2) of the noise drawn fresh, "
    "noise level eta in [0, 1] (a flow model's)",
}
"""Every dynamics a family may offer, by name, with what it is."""


@dataclass(frozen=True)
class Sampler:
    """The dynamics of a chain's stochastic steps, their noise level and which steps are stochastic. The default is
    the family's own dynamics at noise 0: its deterministic sampler (DDIM's ODE, Euler's on a flow model)."""

    dynamics: str | None = None
    """One of DYNAMICS that the policy's family offers; None: the family's own (ChainPolicy.dynamics[0])."""
    noise: float = 0.0
    """The noise level of the stochastic steps, in the dynamics' units (0: every step deterministic)."""
    window: tuple[int, int] | None = None
    """(start, stop): only the steps start .. stop - 1 are stochastic, the others take the deterministic step (the
    SDE window of Flow-GRPO-Fast and MixGRPO); None: every step."""

    def __post_init__(self):
        if self.dynamics is not None and self.dynamics not in DYNAMICS:
            raise ValueError(f"unknown sampler dynamics {self.dynamics!r}; valid: {', '.join(DYNAMICS)}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"a sampler's noise level must be a finite number >= 0, got {self.noise}")
        if self.dynamics == "cps" and self.noise > 1:
            raise ValueError(f"coefficients-preserving sampling's noise level is in [0, 1], got {self.noise}")
        if self.window is not None and not 0 <= self.window[0] <= self.window[1]:
            raise ValueError(f"a sampler's window (start, stop) needs 0 <= start <= stop, got {self.window}")

    def noise_levels(self, steps: int) -> tuple[float, ...]:
        """The noise level of each of a chain's `steps` steps: the sampler's inside its window, 0 outside."""
        if self.window is None:
            return (float(self.noise),) * steps
        start, stop = self.window
        if stop > steps:
            raise ValueError(f"a sampler's window {self.window} reaches past the chain's {steps} steps")
        return tuple(float(self.noise) if start <= s < stop else 0.0 for s in range(steps))


DETERMINISTIC = Sampler()
"""The family's own dynamics at noise 0: its deterministic sampler, what evaluation draws with."""
