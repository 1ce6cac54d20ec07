"""Rectified flow, the tiny counterpart of SD3: velocity prediction on the straight path between data and noise,
  x_t = (1 - t) x0 + t eps,   t in [0, 1] (t = 1 is pure noise),   v = dx_t/dt = eps - x0,
with the network fed the timestep 1000 t (SD3's convention). Training is conditional flow matching,
E_{t ~ U(0, 1), eps} ||v_theta(x_t, t) - (eps - x0)||^2.

Sampling runs over the grid t_k = 1 - k / S (k = 0 .. S). A step from t to s < t predicts
x0 = x_t - t v and eps = x_t + (1 - t) v and moves to
  x_s ~ N((1 - s) x0 + sqrt(s^2 - sigma^2) eps, sigma^2 I),
  sigma = eta * (s / t) * sqrt(t^2 - (1 - t)^2 s^2 / (1 - s)^2),
DDIM's family written for this path: sigma at eta = 1 is the posterior std of x_s given x_t and x0, so every
eta in [0, 1] keeps the marginals of the path (for a perfect v), and eta = 0 is exactly the Euler step of the
ODE, x_s = x_t + (s - t) v (diffusers' FlowMatchEulerDiscreteScheduler). With eta > 0 every step but the
last (s = 0, where sigma = 0) is a Gaussian transition with a log-probability, as policy gradients need.

The GRPO papers' samplers are the other way to the same marginals: the reverse-time SDE whose marginals equal the
ODE's for any noise level sigma_t (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470, eq. 8; the score of the path is
-eps_hat / t),
  dx = [v + sigma_t^2 / (2 t) (x + (1 - t) v)] dt + sigma_t dw,
taken by Euler-Maruyama from t to s < t:
  x_s ~ N(x_t - (t - s) [v + sigma_t^2 / (2 t) eps_hat],  sigma_t^2 (t - s) I),   eps_hat = x_t + (1 - t) v,
with sigma_t = a sqrt(t / (1 - t)) (dynamics `flow-sde`, noise level a; at t = 1, where it is infinite, it is
taken at the chain's next time) or sigma_t = eta constant (`dance-sde`: DanceGRPO, Xue et al. 2025, arXiv
2505.07818). Their last step, to s = 0, is the deterministic Euler step here, as in the sampler above, so that
images carry no injected noise (the papers' samplers noise it too; in pixel space that noise is visible).

Coefficients-preserving sampling (`cps`, Wang and Yu 2025, arXiv 2509.05952) is the DDIM form above with the noise
set by its level eta in [0, 1] rather than by the posterior:
  x_s ~ N((1 - s) x0 + s cos(eta pi / 2) eps_hat,  (s sin(eta pi / 2))^2 I),
so that for a perfect v the coefficients of x_s on the data and on the noise are the path's, (1 - s) and s (the
Euler-Maruyama SDE's are not: its excess noise is what CPS removes); eta = 0 is the Euler step, eta = 1 renoises the
predicted clean image afresh. It keeps the coefficients, not the path's marginals: each step renoises x0_hat, a
posterior mean, by O(1) rather than O(sqrt(dt)), so over many steps its images spread less than the data, the more
so the larger eta (tests/test_flow.py).
"""

from __future__ import annotations

import math

import torch

from models.policy import ChainPolicy, Transition, reduce_per_image

TIMESTEP_SCALE = 1000.0


def velocity_from_data(x: torch.Tensor, timestep: torch.Tensor, x0: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """The velocity of a network that predicts the clean image x0 at x_t (timestep (B,) in the network's units,
    1000 t): v = (x_t - x0) / t, with t held at least `floor` where the division would blow up (JiT's data
    prediction, Li and He 2025, arXiv 2511.13720). Regressed through the flow matching loss, it is the
    x0 error weighted by 1 / t^2."""
    t = (timestep.float() / TIMESTEP_SCALE).view(-1, *(1,) * (x.dim() - 1))
    return (x - x0) / t.clamp(min=floor)


def flow_transition(x: torch.Tensor, v: torch.Tensor, t: float, s: float, eta: float) -> tuple[torch.Tensor, float]:
    """Mean and std of the step from time t to s < t, given the velocity v predicted at (x, t)."""
    x0, eps = x - t * v, x + (1 - t) * v
    posterior = (s / t) * math.sqrt(max(t**2 - ((1 - t) * s / (1 - s)) ** 2, 0.0))
    std = min(eta * posterior, s)  # eta > 1 would ask for more noise than x_s holds
    return (1 - s) * x0 + math.sqrt(s**2 - std**2) * eps, std


def sde_noise_level(dynamics: str, level: float, t: float, s: float) -> float:
    """sigma_t of the SDE `dynamics` (flow-sde or dance-sde) at noise level `level`, for a step from t to s."""
    if dynamics == "dance-sde":
        return level
    u = t if t < 1 else s  # sqrt(t / (1 - t)) is infinite at t = 1
    return level * math.sqrt(u / (1 - u))


def sde_transition(x: torch.Tensor, v: torch.Tensor, t: float, s: float, sigma: float) -> tuple[torch.Tensor, float]:
    """Mean and std of the Euler-Maruyama step of the SDE above from t to s < t, noise level sigma_t = sigma."""
    eps = x + (1 - t) * v
    return x - (t - s) * (v + sigma**2 / (2 * t) * eps), sigma * math.sqrt(t - s)


def cps_transition(x: torch.Tensor, v: torch.Tensor, t: float, s: float, eta: float) -> tuple[torch.Tensor, float]:
    """Mean and std of coefficients-preserving sampling's step from t to s < t at noise level eta in [0, 1]."""
    x0, eps = x - t * v, x + (1 - t) * v
    return (1 - s) * x0 + s * math.cos(eta * math.pi / 2) * eps, stochastic_step_std("cps", eta, t, s)


def stochastic_step_std(dynamics: str, level: float, t: float, s: float) -> float:
    """The std of a stochastic step from t to s (0 < s < t) of an SDE `dynamics` (flow-sde, dance-sde or cps) at
    noise level `level`, as sde_transition and cps_transition draw it: it does not depend on the velocity, so a
    method can weigh a chain's steps by it before sampling them (methods/tempflow_grpo.py)."""
    if dynamics == "cps":
        return s * math.sin(level * math.pi / 2)
    if dynamics in ("flow-sde", "dance-sde"):
        return sde_noise_level(dynamics, level, t, s) * math.sqrt(t - s)
    raise ValueError(f"stochastic_step_std reads flow-sde, dance-sde or cps, got {dynamics!r}")


class FlowPolicy(ChainPolicy):
    """A rectified-flow model, sampled by Euler (noise 0), its DDIM-form stochastic sampler (`ddim`), the GRPO
    papers' SDE (`flow-sde`, `dance-sde`) or coefficients-preserving sampling (`cps`)."""

    family = "flow"
    default_steps = 20
    loss_nfe = 3
    dynamics = ("ddim", "flow-sde", "dance-sde", "cps")

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ValueError(f"a flow model samples with at least 1 step, got {steps}")
        return 1 - torch.arange(steps, dtype=torch.float64) / steps

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, text, *, guided: bool = True) -> torch.Tensor:
        return self.predict(x, (t * TIMESTEP_SCALE).to(x.device, torch.float32), text, guided=guided)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """v_theta(x_t, t) for per-sample times t (B,) in [0, 1]: the conditional velocity flow matching regresses
        (no classifier-free guidance, where a family has it)."""
        return self._velocity(x, t, self._text(prompts), guided=False)

    def step_output(self, x, t, text):
        """v_theta(x_t, t), guided where the family has guidance."""
        return self._velocity(x, t, text)

    def transition_from(self, x, output, step, timesteps, noise, dynamics):
        t = float(timesteps[step])
        s = float(timesteps[step + 1]) if step + 1 < len(timesteps) else 0.0
        v = output
        if dynamics == "ddim" or s == 0 or noise == 0:
            return Transition(*flow_transition(x, v, t, s, noise if dynamics == "ddim" else 0.0), x - t * v)
        if dynamics == "cps":
            return Transition(*cps_transition(x, v, t, s, noise), x - t * v)
        return Transition(*sde_transition(x, v, t, s, sde_noise_level(dynamics, noise, t, s)), x - t * v)

    def noised(self, x0: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise at flow time t = `timestep`."""
        t = float(timestep)
        return (1 - t) * x0 + t * noise

    def flow_matching_pair(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A point on each image's path and the velocity to regress there: (x_t, t (B,), target v)."""
        return self.flow_matching_point(self.encode(images), generator)

    def flow_matching_point(
        self, x0: torch.Tensor, generator: torch.Generator, shared: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As flow_matching_pair, from clean chain states x0 (B, *latent_shape) rather than images; each `shared`
        consecutive states share one draw of (t, noise) (DGPO's group, whose samples are compared at one point)."""
        t = torch.rand(len(x0) // shared, generator=generator, dtype=torch.float64).repeat_interleave(shared)
        noise = torch.randn((len(x0) // shared, *x0.shape[1:]), generator=generator).repeat_interleave(shared, dim=0)
        noise = noise.to(self.device)
        t_ = t.to(self.device, torch.float32).view(-1, *(1,) * (x0.dim() - 1))
        return (1 - t_) * x0 + t_ * noise, t, noise - x0

    def loss(self, images, prompts, generator, weights=None):
        """Conditional flow matching on images in [0, 1]."""
        x_t, t, target = self.flow_matching_pair(images, generator)
        return reduce_per_image((self.velocity(x_t, t, prompts) - target) ** 2, weights)

    def training_errors(self, images, prompts, generator):
        x_t, t, target = self.flow_matching_pair(images, generator)
        return ((self.velocity(x_t, t, prompts) - target) ** 2).flatten(1).mean(dim=1)
