"""The Policy protocol every method trains, and its epsilon-prediction diffusion implementation.

A policy samples a `Trajectory`: the chain of latents x_T .. x_0 a sampler visits, the Gaussian
transition p(x_prev | x_t) = N(mean, std^2 I) of every step (std 0: a deterministic step) and the
log-probability of every stochastic step actually taken. The stochastic steps are the chain's actions.
Policy-gradient methods (DDPO) re-evaluate those log-probabilities under updated parameters; direct-gradient methods
sample with `grad=True`; reward-weighted and ranking methods train with the family's own loss.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import torch
import torch.utils.checkpoint
from torch import nn

from models.diffusion import NoiseSchedule, add_noise, alpha_bar_at, ddim_transition, gaussian_log_prob, predict_x0
from models.sampler import DETERMINISTIC, Sampler
from models.text import PromptEncoder


@dataclass
class Trajectory:
    """One batch of sampling chains. B = batch, S = sampler steps, (C, H, W) = image shape."""

    prompts: list[str]
    timesteps: torch.Tensor  # (S,) the timestep (int64) or flow time (float64) each step starts from, descending
    # a chain stopped early (sample's `until` k) holds the first k steps below: S + 1 latents become k + 1
    latents: torch.Tensor  # (B, S + 1, C, H, W): x_T, ..., x_0 (model space, [-1, 1] for data)
    means: torch.Tensor  # (B, S, C, H, W): mean of each step's Gaussian transition
    predictions: torch.Tensor  # (B, S, C, H, W): the model's estimate of x_0 at each step (Tweedie's for diffusion)
    # latents, means, predictions and images carry the sampling graph when sampled with grad=True
    stds: torch.Tensor  # (S,): std of each step's transition (0 for a deterministic step)
    log_probs: torch.Tensor | None  # (B, S): log p(x_prev | x_t) of the step taken, NaN at a deterministic
    # step; None if no step is stochastic
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    noise: tuple[float, ...]  # (S,): each step's noise level, in the units of its `dynamics`
    dynamics: str  # the dynamics the chain's steps followed (models/sampler.py: DYNAMICS)
    mean_graphs: tuple[torch.Tensor, ...] = ()  # sampled with score_graph: each step's mean (B, C, H, W) under the
    # sampling parameters, a stochastic step's differentiable through that step's network call alone; () otherwise

    @property
    def stochastic_steps(self) -> list[int]:
        """The steps with a density: the actions of the sampling MDP."""
        return [s for s in range(len(self.stds)) if self.stds[s] > 0]

    def subset(self, index: torch.Tensor) -> Trajectory:
        """The chains of the samples at `index` (B',), same steps."""
        return replace(
            self,
            prompts=[self.prompts[i] for i in index.tolist()],
            latents=self.latents[index],
            means=self.means[index],
            predictions=self.predictions[index],
            log_probs=None if self.log_probs is None else self.log_probs[index],
            images=self.images[index],
            mean_graphs=tuple(mean[index] for mean in self.mean_graphs),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """The chains of `parts` (the same steps, sampled apart, none holding a graph) as one trajectory, in order."""
        if any(part.mean_graphs for part in parts):
            raise ValueError("a trajectory holding its sampling graph is not concatenated: let the graph go first")
        log_probs = [part.log_probs for part in parts if part.log_probs is not None]  # all or none: the same steps
        return replace(
            parts[0],
            prompts=[prompt for part in parts for prompt in part.prompts],
            latents=torch.cat([part.latents for part in parts]),
            means=torch.cat([part.means for part in parts]),
            predictions=torch.cat([part.predictions for part in parts]),
            log_probs=torch.cat(log_probs) if log_probs else None,
            images=torch.cat([part.images for part in parts]),
        )


class NoiseTape:
    """A batch's standard normal draws, made whole and read by rows, so that a batch of chains sampled a part at a
    time (Policy.sample given `tape.rows(start, stop)` in place of the generator) draws from the generator exactly
    what, and in the order, the whole batch sampled at once would: each part's chains are the whole batch's rows. The
    first part to ask for a draw makes it for every row; the others read theirs."""

    def __init__(self, generator: torch.Generator, batch: int):
        self.generator, self.batch = generator, batch
        self.draws: list[torch.Tensor] = []

    def rows(self, start: int, stop: int) -> NoiseRows:
        return NoiseRows(self, start, stop)


class NoiseRows:
    """One part's reader of a NoiseTape: its k-th draw is rows start:stop of the tape's k-th."""

    def __init__(self, tape: NoiseTape, start: int, stop: int):
        self.tape, self.start, self.stop, self.read = tape, start, stop, 0

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        tape = self.tape
        if self.read == len(tape.draws):
            tape.draws.append(torch.randn((tape.batch, *shape[1:]), generator=tape.generator))
        draw = tape.draws[self.read]
        if shape[0] != self.stop - self.start or draw.shape[1:] != tuple(shape[1:]):
            raise ValueError(
                f"draw {self.read} of rows {self.start}:{self.stop} asks for shape {tuple(shape)}; the tape holds "
                f"{tuple(draw.shape)}: the parts of a batch must draw alike"
            )
        self.read += 1
        return draw[self.start : self.stop]


def standard_normal(source: torch.Generator | NoiseRows, shape: Sequence[int]) -> torch.Tensor:
    """A standard normal draw of `shape` from a generator, or a tape's rows (NoiseTape)."""
    return source.randn(shape) if isinstance(source, NoiseRows) else torch.randn(tuple(shape), generator=source)


class Transition(NamedTuple):
    """One sampler step from x: x_next ~ N(mean, std^2 I) (std 0: deterministic), and the x_0 the model predicts."""

    mean: torch.Tensor
    std: float
    x0: torch.Tensor


class Policy(Protocol):
    """What a method may do with a generator (Trainer.policy). Implemented once per model family (ChainPolicy's
    subclasses), and wrapped by the harness's meter, which forwards every call."""

    family: str
    default_steps: int
    latent_shape: tuple[int, ...]
    """The shape of one chain state x (the image itself for a pixel-space model)."""
    schedule: NoiseSchedule
    """The diffusion noise schedule the timesteps index (grids for Scores-as-Actions' stratified sampling)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it generates."""
        ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from model-space samples or predictions (latents, at scale)."""
        ...

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """The family's grid of `steps` steps: the descending timesteps they start from, (steps,)."""
        ...

    def sample(
        self,
        prompts: list[str],
        steps: int | torch.Tensor,
        generator: torch.Generator | NoiseRows,
        sampler: Sampler = DETERMINISTIC,
        *,
        initial: torch.Tensor | None = None,
        grad: bool = False,
        grad_steps: int | None = None,
        until: int | None = None,
        checkpoint: bool = False,
        score_graph: bool = False,
    ) -> Trajectory: ...

    def noised(self, x0: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chain state at `timestep` (one of a grid's) of clean states x0 with `noise`, as the family's forward
        process makes it: (B, *latent_shape)."""
        ...

    def log_prob(self, trajectory: Trajectory, step: int) -> torch.Tensor: ...

    def step_mean(self, trajectory: Trajectory, step: int) -> torch.Tensor: ...

    def step_means(self, trajectory: Trajectory, steps: Sequence[int]) -> list[torch.Tensor]:
        """The means of the recorded chains' transitions at `steps` under the current parameters, one (B,
        *latent_shape) tensor a step, from one network call on the steps' states: differentiable."""
        ...

    def loss(
        self, images: torch.Tensor, prompts: list[str], generator: torch.Generator, weights: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def training_errors(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """Each image's squared error (B,) in the family's training loss, at a noise level and noise the generator
        draws: two calls from one generator state draw the same ones (Diffusion-DPO's paired errors)."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def frozen_copy(self) -> Policy: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class FlowMatchingPolicy(Policy, Protocol):
    """A flow-family policy: its velocity field and the flow-matching training pair (what orw_cfm_w2 regresses)."""

    def velocity(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...

    def frozen_copy(self) -> FlowMatchingPolicy: ...

    def flow_matching_pair(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def flow_matching_point(
        self, x0: torch.Tensor, generator: torch.Generator, shared: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def images_to_model_space(images: torch.Tensor) -> torch.Tensor:
    return images * 2 - 1


def model_space_to_images(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def reduce_per_image(squared_error: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """(B, ...) squared errors -> their mean, or with weights (B,) the weighted sum of per-image means."""
    if weights is None:
        return squared_error.mean()
    return (squared_error.flatten(1).mean(dim=1) * weights.to(squared_error)).sum()


class ChainPolicy(ABC):
    """A generator sampled by a chain of Gaussian transitions x_T -> ... -> x_0, one network call a step.

    A family implements `sampling_timesteps`, `transition` (the mean and std of one step) and `loss`;
    sampling, re-evaluating a recorded step, log-probabilities and copies are written once, here.
    """

    family: str
    default_steps: int
    """The sampler steps the family is meant to be used with (its evaluation default)."""
    loss_nfe: int
    """Network evaluations of one image's training loss (`loss`): forward + backward (2), plus any no-grad forward
    that makes its target."""

    def __init__(self, network: nn.Module, encoder: PromptEncoder, schedule: NoiseSchedule | None = None):
        self.network = network
        self.encoder = encoder
        self.schedule = schedule or NoiseSchedule()
        self.alphas_cumprod = self.schedule.alphas_cumprod()
        self.latent_shape = tuple(network.image_shape)
        """The shape of the chain's states x (B, *latent_shape): the image itself for pixel-space models."""
        self.image_shape = self.latent_shape
        """The shape of the decoded images (B, *image_shape) in [0, 1]."""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _text(self, prompts: list[str]) -> torch.Tensor:
        """The conditioning of `prompts` that `predict` hands the network; opaque to the samplers and losses."""
        return self.encoder(prompts).to(self.device)

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, text, network: nn.Module | None = None, *, guided: bool = True
    ) -> torch.Tensor:
        """The network's output (the family's eps or velocity) at states x (B, *latent_shape) and per-sample
        timesteps t (B,) in the network's units, conditioned on `text` from `_text`: (B, *latent_shape).
        `network` overrides the policy's own (a distillation target). `guided`: the prediction the sampler
        follows (classifier-free guidance, where a family has it) rather than the plain conditional one the
        training losses regress; the embedded models have no guidance and ignore it."""
        return (self.network if network is None else network)(x, t, text)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, *image_shape) in [0, 1] from chain states x (differentiable); latent models decode here."""
        return model_space_to_images(x)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Chain states (model space) of images in [0, 1]: what the family's training loss noises."""
        return images_to_model_space(images.to(self.device))

    @abstractmethod
    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """The `steps` timesteps the sampler starts its steps from, descending: (steps,)."""

    dynamics: tuple[str, ...] = ("ddim",)
    """The dynamics (models/sampler.py: DYNAMICS) the family's stochastic steps can follow; the first is its own."""

    def transition(
        self, x: torch.Tensor, step: int, timesteps: torch.Tensor, text, noise: float, dynamics: str
    ) -> Transition:
        """Step `step` of the chain over `timesteps`, from x (B, *latent_shape) at timesteps[step], at noise level
        `noise` of `dynamics`: one network call (`step_output`), then the family's step (`transition_from`)."""
        output = self.step_output(x, timesteps[step].expand(len(x)), text)
        return self.transition_from(x, output, step, timesteps, noise, dynamics)

    @abstractmethod
    def step_output(self, x: torch.Tensor, t: torch.Tensor, text) -> torch.Tensor:
        """What the family's step is computed from (its eps, velocity or x0 estimate) at states x (B, *latent_shape)
        and per-sample grid timesteps t (B,), the sampler's units: one network call, (B, *latent_shape)."""

    @abstractmethod
    def transition_from(
        self, x: torch.Tensor, output: torch.Tensor, step: int, timesteps: torch.Tensor, noise: float, dynamics: str
    ) -> Transition:
        """The transition of `transition` from x and its `step_output` at timesteps[step]; no network call."""

    @abstractmethod
    def loss(
        self, images: torch.Tensor, prompts: list[str], generator: torch.Generator, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The family's own training loss on images in [0, 1] and their prompts: a scalar, the mean over
        images, or with `weights` (B,) summing to 1 their weighted sum (reward-weighted maximum likelihood)."""

    @abstractmethod
    def training_errors(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """Each image's term (B,) of the training loss, at a noise level and noise the generator draws: two calls
        from one generator state draw the same ones (Diffusion-DPO's paired errors)."""

    def noised(self, x0: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chain state at `timestep` of clean states x0 (B, *latent_shape) with `noise` (same shape): the
        diffusion forward process sqrt(a_t) x0 + sqrt(1 - a_t) noise (the flow family overrides it)."""
        alpha_bar = self.alphas_cumprod[int(timestep)].to(x0.device).expand(len(x0))
        return add_noise(x0, noise, alpha_bar)

    def sample(
        self,
        prompts: list[str],
        steps: int | torch.Tensor,
        generator: torch.Generator | NoiseRows,
        sampler: Sampler = DETERMINISTIC,
        *,
        initial: torch.Tensor | None = None,
        grad: bool = False,
        grad_steps: int | None = None,
        until: int | None = None,
        checkpoint: bool = False,
        score_graph: bool = False,
    ) -> Trajectory:
        """Runs the sampler over `steps` steps of the family's grid, or over an explicit grid (a descending tensor of
        the timesteps the steps start from, as `sampling_timesteps` returns), each step following the `sampler`'s
        dynamics at its noise level (models/sampler.py; the default: the family's deterministic sampler).
        `initial` is the starting noise x_T (B, *latent_shape), drawn from the generator when None (the generator, or
        a NoiseTape's rows: a part of a batch sampled a part at a time, drawing what the whole batch would). With
        grad=True the latents, means and final images are differentiable w.r.t. the parameters (the
        reparameterization trick: each step is mean + std * noise); `grad_steps` K keeps the graph of the last K steps
        taken only (DRaFT-K's truncation: the steps before run without it); `checkpoint` then recomputes each step's
        activations in the backward pass instead of keeping them. `until` k stops the chain after its first k steps (the
        trajectory holds x_0 .. x_k, and its images decode x_k); None: every step. `score_graph` keeps instead the graph
        a policy gradient differentiates: each stochastic step's mean, in `mean_graphs`, through that step's network
        call alone, with the states taken as constants (the actions), so the sampling pass doubles as the on-policy
        evaluation of its steps (methods/toolkit/policy_gradient.py: ppo_chain_backward's on_policy); the chain is
        unchanged."""
        timesteps = steps if isinstance(steps, torch.Tensor) else self.sampling_timesteps(steps)
        levels = sampler.noise_levels(len(timesteps))
        dynamics = sampler.dynamics or self.dynamics[0]
        if dynamics not in self.dynamics:
            raise ValueError(
                f"a {self.family} model has no sampler dynamics {dynamics!r}; valid: {', '.join(self.dynamics)}"
            )
        if grad and score_graph:
            raise ValueError("a chain keeps one graph: the reparameterized one (grad) or the score's (score_graph)")
        text = self._text(prompts)
        if initial is None:
            x = standard_normal(generator, (len(prompts), *self.latent_shape)).to(self.device)
        elif initial.shape != (len(prompts), *self.latent_shape):
            raise ValueError(
                f"initial noise of shape {tuple(initial.shape)}, expected {(len(prompts), *self.latent_shape)}"
            )
        else:
            x = initial.to(self.device)
        taken = len(timesteps) if until is None else until
        if not 1 <= taken <= len(timesteps) or (grad_steps is not None and not 1 <= grad_steps <= taken):
            raise ValueError(
                f"a chain of {len(timesteps)} steps takes 1 to {len(timesteps)} (until: {until}), and keeps the "
                f"graph of 1 to those taken (grad_steps: {grad_steps})"
            )
        first_graph = taken - (taken if grad_steps is None else grad_steps)
        latents, means, stds, log_probs, predictions, mean_graphs = [x], [], [], [], [], []
        for step in range(taken):
            graphed = (grad and step >= first_graph) or score_graph
            with torch.set_grad_enabled(graphed):
                if graphed and checkpoint:
                    # the whole step is recomputed in the backward pass (no early stop once its saved tensors are
                    # back), so every family's recomputation is one more network evaluation, which the meter counts
                    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
                        mean, std, x0 = torch.utils.checkpoint.checkpoint(
                            self.transition, x, step, timesteps, text, levels[step], dynamics, use_reentrant=False
                        )
                else:
                    mean, std, x0 = self.transition(x, step, timesteps, text, levels[step], dynamics)
                if score_graph:  # a deterministic step is no action: its graph is let go at once
                    mean_graphs.append(mean if std > 0 else mean.detach())
                    mean, x0 = mean.detach(), x0.detach()
                if std > 0:
                    noise = standard_normal(generator, x.shape).to(self.device)
                    x = mean + std * noise
                    log_probs.append(gaussian_log_prob(x.detach(), mean.detach(), std))
                else:
                    x = mean
                    log_probs.append(torch.full((len(prompts),), float("nan"), device=self.device))
                latents.append(x)
                means.append(mean)
                stds.append(std)
                predictions.append(x0)
        return Trajectory(
            prompts=list(prompts),
            timesteps=timesteps,
            latents=torch.stack(latents, dim=1),
            means=torch.stack(means, dim=1),
            predictions=torch.stack(predictions, dim=1),
            stds=torch.tensor(stds, dtype=torch.float32),
            log_probs=torch.stack(log_probs, dim=1) if any(std > 0 for std in stds) else None,
            images=self.decode(x),
            noise=levels,
            dynamics=dynamics,
            mean_graphs=tuple(mean_graphs),
        )

    def step_mean(self, trajectory: Trajectory, step: int) -> torch.Tensor:
        """Mean of the transition at `step` under the current parameters: (B, *latent_shape), differentiable."""
        return self.step_means(trajectory, [step])[0]

    def step_means(self, trajectory: Trajectory, steps: Sequence[int]) -> list[torch.Tensor]:
        """The means of `step_mean` at several steps of the chains, from one network call on the K * B states
        (step-major): the K steps' evaluations batched, which costs the same network evaluations as K calls in
        fewer, larger ones. Differentiable; the caller bounds K, since the call's activations grow with it."""
        batch = len(trajectory.prompts)
        x = torch.cat([trajectory.latents[:, s] for s in steps]).to(self.device)
        t = trajectory.timesteps[list(steps)].repeat_interleave(batch)
        output = self.step_output(x, t, self._text(trajectory.prompts * len(steps)))
        return [
            self.transition_from(x_s, output_s, s, trajectory.timesteps, trajectory.noise[s], trajectory.dynamics).mean
            for s, x_s, output_s in zip(steps, x.split(batch), output.split(batch), strict=True)
        ]

    def log_prob(self, trajectory: Trajectory, step: int) -> torch.Tensor:
        """log p_theta(x_{step+1} | x_step) of the recorded step under the current parameters: (B,)."""
        if not trajectory.stds[step] > 0:
            raise ValueError(f"step {step} of this chain is deterministic (std 0): it has no log-probability")
        mean = self.step_mean(trajectory, step)
        return gaussian_log_prob(trajectory.latents[:, step + 1].to(self.device), mean, float(trajectory.stds[step]))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def frozen_copy(self) -> ChainPolicy:
        """A frozen reference policy (e.g. for a divergence penalty), sharing the prompt cache."""
        network = copy.deepcopy(self.network).eval().requires_grad_(False)
        return type(self)(network, self.encoder, self.schedule)

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state)


class DiffusionPolicy(ChainPolicy):
    """An epsilon-prediction diffusion model sampled with DDIM (eta = 0: ODE, eta > 0: stochastic)."""

    family = "diffusion"
    default_steps = 20
    loss_nfe = 3

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        return self.schedule.sampling_timesteps(steps)

    def step_output(self, x, t, text):
        """eps_theta(x_t, t)."""
        return self.predict(x, t.to(x.device), text)

    def transition_from(self, x, output, step, timesteps, noise, dynamics):
        t, eps = int(timesteps[step]), output
        # after the last timestep the chain lands on alpha_bar_0 (alpha_bar_at's convention for t < 0)
        t_prev = int(timesteps[step + 1]) if step + 1 < len(timesteps) else -1
        alpha_bar = alpha_bar_at(self.alphas_cumprod, t)
        mean, std = ddim_transition(x, eps, alpha_bar, alpha_bar_at(self.alphas_cumprod, t_prev), noise)
        return Transition(mean, std, predict_x0(x, eps, alpha_bar))

    def loss(self, images, prompts, generator, weights=None):
        """The denoising loss E_t,eps ||eps - eps_theta(x_t, t)||^2 on images in [0, 1]."""
        return reduce_per_image(self._squared_errors(images, prompts, generator)[0], weights)

    def velocity_loss(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """The denoising loss weighted by 1 / alpha_bar_t: the v-prediction loss (Salimans and Ho 2022, arXiv
        2202.00512), whatever the network predicts; in x0's terms its error weighted by 1 / (1 - alpha_bar_t), where
        the denoising loss weighs it by alpha_bar_t / (1 - alpha_bar_t), which vanishes at high noise. What a base
        generator predicting clean images learns from (the scenes world's); methods fine-tune with `loss`."""
        errors, t = self._squared_errors(images, prompts, generator)
        return (errors.flatten(1).mean(dim=1) / self.alphas_cumprod[t].to(errors)).mean()

    def training_errors(self, images, prompts, generator):
        return self._squared_errors(images, prompts, generator)[0].flatten(1).mean(dim=1)

    def _squared_errors(self, images, prompts, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps - eps_theta(x_t, t))^2 (B, *latent_shape) at random timesteps t (B,)."""
        x0 = self.encode(images)
        t = torch.randint(0, self.schedule.num_train_timesteps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        x_t = add_noise(x0, noise, self.alphas_cumprod[t].to(self.device))
        eps = self.predict(x_t, t.to(self.device), self._text(prompts), guided=False)
        return (eps - noise) ** 2, t
