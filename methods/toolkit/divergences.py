"""f-divergences between the per-step Gaussian transitions of two policies, shared by the methods.

A policy's step is a Gaussian transition N(mean, std^2 I) over D = C*H*W dimensions. For a convex f
with f(1) = 0, D_f(P || Q) = E_Q[f(p/q)] = E_P[f(r) / r] with r = p/q.

Normalization, the same for every divergence and every method: a step's divergence is the average
over the D dimensions of the divergences between the one-dimensional marginals, returned per sample,
shape (B,); a method sums it over the chain's steps. For the KL (additive over independent dimensions)
this is exactly the D-dimensional KL divided by D. For the others it is not the joint divergence: the
bounded ones (Jensen-Shannon, Hellinger, total variation) saturate at their bound in high dimensions,
where their gradients vanish, and the chi-square of the joint grows exponentially with D; the per-
dimension average keeps every divergence on a scale that does not depend on the image size.

Closed forms where they exist (KL both ways, squared Hellinger, chi-square, and total variation for
equal stds, which is the case of two policies sharing a noise schedule); otherwise, and for any f, a
reparameterized Monte Carlo estimate. It samples the balanced mixture M = (P + Q) / 2, half of the
draws x = mean_p + std_p * eps from P (differentiable in mean_p) and half from Q, and averages
q/m * f(p/q) = 2 f(r) / (1 + r): unbiased, and unlike sampling P alone it sees the mass Q puts
where P has almost none (which is all of the divergence when the two are far apart).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class FDivergence:
    name: str
    f: Callable[[Tensor], Tensor]
    """The generator f(t), convex with f(1) = 0: D_f(P || Q) = E_Q[f(p / q)]."""
    mixture_integrand: Callable[[Tensor], Tensor]
    """2 f(r) / (1 + r) as a function of u = log r, written to be stable for large |u|."""
    closed_form: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None
    """Elementwise divergence of N(mean_p, var_p) from N(mean_q, var_q), args (mean_p, var_p, mean_q, var_q),
    or None where there is none."""


def _kl(mp, vp, mq, vq):
    return 0.5 * (torch.log(vq / vp) + (vp + (mp - mq) ** 2) / vq - 1)


def _reverse_kl(mp, vp, mq, vq):
    return _kl(mq, vq, mp, vp)


def _hellinger(mp, vp, mq, vq):
    # 1 - Bhattacharyya coefficient
    s = vp + vq
    return 1 - torch.sqrt(2 * torch.sqrt(vp * vq) / s) * torch.exp(-((mp - mq) ** 2) / (4 * s))


def _chi2(mp, vp, mq, vq):
    # E_Q[(p/q)^2] - 1; finite only when 2 var_q > var_p
    d = 2 * vq - vp
    if (d <= 0).any():
        raise ValueError("the chi-square divergence is infinite when std_p^2 >= 2 std_q^2")
    return torch.expm1((mp - mq) ** 2 / d + 0.5 * torch.log(vq**2 / (vp * d)))


def _tv(mp, vp, mq, vq):
    if not torch.equal(vp, vq):
        raise ValueError("total variation has a closed form here only for equal stds; use monte_carlo")
    return torch.erf((mp - mq).abs() / (2 * math.sqrt(2) * vp.sqrt()))


DIVERGENCES = {
    d.name: d
    for d in (
        FDivergence("kl", lambda t: t * torch.log(t), lambda u: 2 * u * torch.sigmoid(u), _kl),
        FDivergence("reverse_kl", lambda t: -torch.log(t), lambda u: -2 * u * torch.sigmoid(-u), _reverse_kl),
        # the mean KL of P and Q to their mixture; at most log 2
        FDivergence(
            "js",
            lambda t: 0.5 * (t * torch.log(t) - (1 + t) * torch.log((1 + t) / 2)),
            lambda u: u * torch.sigmoid(u) - F.softplus(u) + math.log(2),
            None,
        ),
        # squared Hellinger distance 1 - Bhattacharyya coefficient, in [0, 1]
        FDivergence(
            "hellinger", lambda t: 0.5 * (torch.sqrt(t) - 1) ** 2, lambda u: 1 - 1 / torch.cosh(u / 2), _hellinger
        ),
        FDivergence(
            "chi2", lambda t: (t - 1) ** 2, lambda u: 2 * torch.expm1(u) * torch.tanh(u / 2), _chi2
        ),  # Pearson's
        FDivergence("tv", lambda t: 0.5 * (t - 1).abs(), lambda u: torch.tanh(u / 2).abs(), _tv),  # in [0, 1]
    )
}


def check_divergence_name(name: str) -> str:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; valid: {', '.join(DIVERGENCES)}")
    return name


def _variance(std: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(std, dtype=like.dtype, device=like.device) ** 2 * torch.ones_like(like)


def closed_form(name: str, mean_p: Tensor, std_p: float | Tensor, mean_q: Tensor, std_q: float | Tensor) -> Tensor:
    """D_f(N(mean_p, std_p^2) || N(mean_q, std_q^2)) averaged over dimensions: (B, ...) -> (B,)."""
    divergence = DIVERGENCES[check_divergence_name(name)]
    if divergence.closed_form is None:
        raise ValueError(f"{name} has no closed form between Gaussians; use monte_carlo")
    per_dim = divergence.closed_form(mean_p, _variance(std_p, mean_p), mean_q, _variance(std_q, mean_p))
    return per_dim.flatten(1).mean(dim=1)


def monte_carlo(
    name: str,
    mean_p: Tensor,
    std_p: float | Tensor,
    mean_q: Tensor,
    std_q: float | Tensor,
    samples: int,
    generator: torch.Generator,
) -> Tensor:
    """The reparameterized estimate of the same quantity as `closed_form` from `samples` draws of the
    mixture per dimension (samples / 2 from each side, at least one)."""
    integrand = DIVERGENCES[check_divergence_name(name)].mixture_integrand
    var_p, var_q = _variance(std_p, mean_p), _variance(std_q, mean_p)
    eps = torch.randn((2, max(1, samples // 2), *mean_p.shape), generator=generator).to(mean_p.device, mean_p.dtype)
    x = torch.cat([mean_p + var_p.sqrt() * eps[0], mean_q + var_q.sqrt() * eps[1]])
    log_ratio = (
        -((x - mean_p) ** 2) / (2 * var_p)
        - 0.5 * torch.log(var_p)
        + (x - mean_q) ** 2 / (2 * var_q)
        + 0.5 * torch.log(var_q)
    )
    return integrand(log_ratio).mean(dim=0).flatten(1).mean(dim=1)


def step_divergence(
    name: str,
    mean_p: Tensor,
    std_p: float | Tensor,
    mean_q: Tensor,
    std_q: float | Tensor,
    samples: int,
    generator: torch.Generator,
) -> Tensor:
    """The closed form where one exists for these stds, else the Monte Carlo estimate: (B, ...) -> (B,)."""
    divergence = DIVERGENCES[check_divergence_name(name)]
    equal_stds = torch.equal(torch.as_tensor(std_p, dtype=torch.float64), torch.as_tensor(std_q, dtype=torch.float64))
    if divergence.closed_form is not None and (name != "tv" or equal_stds):
        return closed_form(name, mean_p, std_p, mean_q, std_q)
    return monte_carlo(name, mean_p, std_p, mean_q, std_q, samples, generator)
