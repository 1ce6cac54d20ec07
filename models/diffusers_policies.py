"""The real model families through diffusers, fine-tuned through LoRA adapters (peft):
  StableDiffusionPolicy     Stable Diffusion 1.x: epsilon prediction, DDIM (a DiffusionPolicy),
  LatentConsistencyPolicy   a latent consistency model, LCM-Dreamshaper-v7's layout (a ConsistencyPolicy),
  StableDiffusion3Policy    Stable Diffusion 3: rectified flow on a shifted time grid (a FlowPolicy).

Each subclasses the embedded family it scales up, so the samplers, transitions, log-probabilities and training
losses are the code the digits world runs and tests. What changes is where the chain lives (a VAE's latent
space: `encode` and `decode`), what conditions the network (CLIP / T5 text encoders: `_text`), and how it is
called (`predict`): classifier-free guidance,
  eps = eps(x, t, null) + w (eps(x, t, c) - eps(x, t, null)),
evaluated as one network call on the doubled batch [null, c] (the meter counts 2B evaluations), with the
empty prompt as null as diffusers' pipelines use it; LCM instead conditions its one call on an embedding of
w (the guidance it was distilled from). The training losses regress the plain conditional prediction.

The networks are frozen in `dtype`; LoRA adapters (float32) on `lora_target_modules` are the only trainable
parameters, the only weights in `state_dict`, and `frozen_copy` is the base model itself: the same modules,
called with the adapters off. On CUDA the denoiser and the VAE run under autocast in `dtype` (the text
encoders in their own weights' dtypes); on CPU everything runs in float32. Weights load from a hub id (the
local cache first; downloaded only when the hub is reachable) or a local directory in diffusers' pipeline
layout.

Departures from the pipelines: the prompt cache holds every prompt's embeddings (on the CPU) for the
policy's life; SD3's flow matching samples t uniformly (the base FlowPolicy's loss), not SD3's logit-normal.
"""

from __future__ import annotations

import contextlib
import copy
import json
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.consistency import ORIGINAL_STEPS, TIMESTEP_SCALING, ConsistencyPolicy
from models.diffusion import NoiseSchedule
from models.flow import TIMESTEP_SCALE, FlowPolicy
from models.policy import ChainPolicy, DiffusionPolicy, images_to_model_space, model_space_to_images

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
SD3_ATTENTION_PROJECTIONS = ATTENTION_PROJECTIONS + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
DECODE_BATCH = 4
"""Images per VAE decoder pass when no gradient is needed (evaluation, sampling without grad)."""
SD_SCHEDULE = NoiseSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
"""Stable Diffusion 1.x's training schedule (its LCMs' too), for a source without a scheduler config."""


@dataclass(frozen=True)
class DiffusersConfig:
    """How a diffusers model is loaded and fine-tuned. Each family's subclass sets its own defaults."""

    source: str = ""
    """Hub id, or a local directory in diffusers' pipeline layout (unet or transformer, vae, text_encoder,
    tokenizer, ..., scheduler)."""
    resolution: int = 512
    """Side of the square images in pixels; the latents' side is resolution / 8 (the VAE's downsampling)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance weight w of the sampler (1: none, one network call of B instead of 2B); LCM:
    the guidance its w-embedding conditions on (always one call)."""
    lora_rank: int = 4
    """Rank r of the LoRA adapters."""
    lora_alpha: float = 4.0
    """LoRA scaling numerator: the adapters add (lora_alpha / r) B A x."""
    lora_target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    """Names (suffixes) of the denoiser's linear layers that get adapters."""
    dtype: str = "bfloat16"
    """float32, bfloat16 or float16: the frozen weights' storage and the denoiser's and VAE's autocast dtype on
    CUDA (LoRA weights stay float32); ignored on CPU, where everything runs in float32. Train in bfloat16: float16
    halves memory the same way but its gradients run without loss scaling, so small ones underflow to zero."""
    gradient_checkpointing: bool = False
    """Recompute the denoiser's and the VAE decoder's activations in the backward pass: less memory, one more
    forward."""
    min_vocab: int = 10_000
    """Smallest tokenizer vocabulary accepted (CLIP's has 49,408 tokens): a tokenizer that failed to load can
    come back nearly empty instead of raising. Lower it only for deliberately tiny test tokenizers."""
    device: str | None = None
    """torch device of every module; None: cuda if available, else cpu."""

    def __post_init__(self):
        # a list would make the frozen config unhashable
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if not self.source:
            raise ValueError("source must name a hub id or a local directory, got an empty string")
        if self.resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {self.resolution}")
        if not self.guidance_scale >= 1:
            raise ValueError(f"guidance_scale must be >= 1 (1: no guidance), got {self.guidance_scale}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not self.lora_target_modules or not all(isinstance(m, str) and m for m in self.lora_target_modules):
            raise ValueError(
                f"lora_target_modules must be module names, e.g. {ATTENTION_PROJECTIONS}, "
                f"got {self.lora_target_modules!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.min_vocab < 0:
            raise ValueError(f"min_vocab must be >= 0, got {self.min_vocab}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(
                    f"device must be a torch device such as cpu, cuda or cuda:1, got {self.device!r}"
                ) from None

    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def weight_dtype(self) -> torch.dtype:
        """The frozen weights' dtype: `dtype` on CUDA, float32 elsewhere (half-precision CPU kernels are slow or
        missing)."""
        return DTYPES[self.dtype] if self.torch_device().type == "cuda" else torch.float32


@dataclass(frozen=True)
class StableDiffusionConfig(DiffusersConfig):
    source: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local pipeline directory of a Stable Diffusion 1.x model (epsilon prediction)."""


@dataclass(frozen=True)
class LatentConsistencyConfig(DiffusersConfig):
    source: str = "SimianLuo/LCM_Dreamshaper_v7"
    """Hub id or local pipeline directory of a latent consistency model (a UNet with time_cond_proj_dim)."""
    guidance_scale: float = 8.5
    """The guidance w the model's w-embedding conditions on (LCM's default 8.5); no second network pass."""


@dataclass(frozen=True)
class StableDiffusion3Config(DiffusersConfig):
    source: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    """Hub id or local pipeline directory of a Stable Diffusion 3 model."""
    resolution: int = 1024
    """Side of the square images in pixels (SD3's native 1024)."""
    guidance_scale: float = 7.0
    """Classifier-free guidance weight (SD3's pipeline default 7.0; 1: none)."""
    lora_rank: int = 32
    """Rank r of the LoRA adapters (Flow-GRPO's)."""
    lora_alpha: float = 64.0
    """LoRA scaling numerator (Flow-GRPO's)."""
    lora_target_modules: tuple[str, ...] = SD3_ATTENTION_PROJECTIONS
    """The joint attention's projections of both streams (image and text), as Flow-GRPO adapts."""
    use_t5: bool = True
    """Load the T5 encoder (text_encoder_3) when the source has one; False, or a source without it: zeros in
    its place, as diffusers' pipeline does (saves about 9 GB)."""
    t5_max_length: int = 256
    """T5 tokens per prompt (the pipeline's max_sequence_length); the zeros stand in for as many."""

    def __post_init__(self):
        super().__post_init__()
        if self.t5_max_length < 1:
            raise ValueError(f"t5_max_length must be >= 1, got {self.t5_max_length}")


class Conditioning(NamedTuple):
    """The text inputs of the network for B prompts, and those of the empty prompt (guidance's null condition)."""

    context: torch.Tensor  # (B, L, D): the tokens the network cross-attends to
    pooled: torch.Tensor | None  # (B, P): SD3's pooled CLIP projections; None for the UNets
    null_context: torch.Tensor | None  # (1, L, D), None without guidance
    null_pooled: torch.Tensor | None  # (1, P)


class UNetDenoiser(nn.Module):
    """A UNet2DConditionModel as the policy's network: forward returns the prediction (B, C, h, w) itself
    (return_dict=False), a tensor whose first dimension the meter counts."""

    def __init__(self, unet: nn.Module, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.model = unet
        self.image_shape = latent_shape  # ChainPolicy's name for the chain's state shape

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, timestep_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(x, t, encoder_hidden_states=context, timestep_cond=timestep_cond, return_dict=False)[0]


class SD3Denoiser(nn.Module):
    """An SD3Transformer2DModel as the policy's network; t is the flow time times 1000, as SD3 takes it."""

    def __init__(self, transformer: nn.Module, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.model = transformer
        self.image_shape = latent_shape

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.model(
            hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=pooled, return_dict=False
        )[0]


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's embedding of guidance weights w (B,) -> (B, dim): sinusoids of 1000 w, as timesteps are embedded
    (diffusers' LatentConsistencyModelPipeline.get_guidance_scale_embedding)."""
    half = dim // 2
    # float32 throughout, in the pipeline's order of operations, so that the embedding matches it exactly
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * frequencies[None, :].to(w.device)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift sigma' = shift s / (1 + (shift - 1) s) (more steps at high noise for shift > 1): any shape."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@contextmanager
def adapters_disabled(model: nn.Module):
    """`model` (a diffusers model with peft adapters) predicts as its base model inside the block."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


@contextmanager
def checkpointing_suspended(model: nn.Module):
    """Switches off diffusers' gradient checkpointing inside `model` for the block. Its recomputation runs in
    the backward pass, outside the block that switched the adapters off: a reference forward would be recomputed
    with the adapters on (another graph, which torch refuses with a CheckpointError)."""
    modules = [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is True]
    for m in modules:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in modules:
            m.gradient_checkpointing = True


def resolve_source(source: str, allow_patterns: list[str]) -> Path:
    """The local directory of `source`: itself, or a hub id's snapshot (the cache first; downloaded, only the
    files matching `allow_patterns`, when the hub is reachable). Offline and uncached: a ValueError saying how
    to get it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(source).expanduser()
    if path.is_dir():
        return path
    how = (
        f"run `hf download {source}` (`huggingface-cli download {source}` with an older huggingface_hub) "
        f"on a networked machine, or pass a local directory in diffusers' pipeline layout"
    )
    # safetensors only: several hubs' repos also hold .bin and full .ckpt copies of every weight
    ignore = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx", "*.h5", "*fp16*", "*non_ema*"]
    try:
        return Path(
            snapshot_download(source, allow_patterns=allow_patterns, ignore_patterns=ignore, local_files_only=True)
        )
    except HFValidationError:
        raise ValueError(
            f"model source {source!r} is neither an existing directory nor a hub id (owner/name)"
        ) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ValueError(
                f"model {source!r} is not in the local Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE): {how}"
            ) from None
    try:
        return Path(snapshot_download(source, allow_patterns=allow_patterns, ignore_patterns=ignore))
    except LocalEntryNotFoundError as error:  # the hub did not answer
        raise ValueError(
            f"model {source!r} is not in the local Hugging Face cache and could not be downloaded ({error}): {how}"
        ) from None


def component_dir(root: Path, name: str) -> Path:
    """root/name, which must exist."""
    folder = root / name
    if not folder.is_dir():
        raise ValueError(
            f"{root} has no {name}/ component: expected diffusers' pipeline layout "
            f"(unet or transformer, vae, text_encoder, tokenizer, ..., scheduler)"
        )
    return folder


def load_tokenizer(root: Path, name: str, min_vocab: int, cls=None):
    """The tokenizer in `root/name`, refused when its vocabulary is smaller than `min_vocab`."""
    from transformers import AutoTokenizer

    component_dir(root, name)
    tokenizer = (cls or AutoTokenizer).from_pretrained(root, subfolder=name)
    if len(tokenizer) < min_vocab:
        raise ValueError(
            f"the tokenizer in {root / name} has only {len(tokenizer)} tokens (min_vocab {min_vocab}): "
            f"it did not load properly (missing vocabulary files?); lower min_vocab only for a "
            f"deliberately tiny tokenizer"
        )
    return tokenizer


def read_scheduler_config(root: Path) -> dict:
    path = root / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def noise_schedule_from(root: Path) -> NoiseSchedule:
    """The DDPM training schedule in `root`'s scheduler config (Stable Diffusion's when there is none)."""
    config = read_scheduler_config(root)
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"{root} predicts {config['prediction_type']!r}; these policies implement epsilon "
            f"prediction (Stable Diffusion 1.x and its LCMs) only"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            f"{root}'s scheduler has trained_betas; only linear and scaled_linear schedules are implemented"
        )
    default = SD_SCHEDULE
    return NoiseSchedule(
        num_train_timesteps=config.get("num_train_timesteps", default.num_train_timesteps),
        beta_start=config.get("beta_start", default.beta_start),
        beta_end=config.get("beta_end", default.beta_end),
        steps_offset=config.get("steps_offset", default.steps_offset),
        beta_schedule=config.get("beta_schedule", default.beta_schedule),
    )


class LoRALatentPolicy(ChainPolicy):
    """What the diffusers families share: LoRA, the VAE's latent space, cached text conditioning, guidance,
    mixed precision and the adapters-off reference. A family passes its network wrapped so that it returns
    a tensor (UNetDenoiser, SD3Denoiser) and implements `_encode_prompts`."""

    Config = DiffusersConfig
    guided_by_cfg = True
    """Whether `predict` runs classifier-free guidance (LCM conditions on w instead)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, source: str | Path | None = None, *, config=None) -> LoRALatentPolicy:
        """The family's pipeline from `source` (a hub id in the local cache, or a directory), or from `config`'s
        source, with fresh LoRA adapters on its denoiser."""

    def __init__(
        self,
        network: nn.Module,
        vae: nn.Module,
        text_encoders: list,
        tokenizers: list,
        config: DiffusersConfig,
        schedule: NoiseSchedule | None = None,
    ):
        super().__init__(network, None, schedule)
        self.config = config
        self.vae = vae
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.image_shape = (3, config.resolution, config.resolution)
        self._shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self._scaling_factor = float(vae.config.scaling_factor)
        self._adapters_enabled = True
        self._embeddings: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

        device, dtype = config.torch_device(), config.weight_dtype()
        self._autocast_dtype = dtype if dtype != torch.float32 else None
        for module in [network, vae, *self.text_encoders]:
            if module is not None:
                module.to(device).eval().requires_grad_(False)
                # only modules built in float32 here: from_pretrained loads in dtype already, keeping the layers a
                # model needs in float32 (T5's feed-forward output overflows in float16), which a cast would undo
                if dtype != torch.float32 and all(p.dtype == torch.float32 for p in module.parameters()):
                    module.to(dtype=dtype)
        self._add_lora()
        if config.gradient_checkpointing:
            self.backbone.enable_gradient_checkpointing()
            vae.enable_gradient_checkpointing()

    @property
    def backbone(self) -> nn.Module:
        """The diffusers model inside the network wrapper, which carries the adapters."""
        return self.network.model

    def _add_lora(self) -> None:
        from peft import LoraConfig

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_target_modules),
            init_lora_weights="gaussian",
        )
        try:
            self.backbone.add_adapter(lora)
        except ValueError as error:
            raise ValueError(
                f"lora_target_modules {list(cfg.lora_target_modules)} do not fit the "
                f"{type(self.backbone).__name__}: {error}"
            ) from error
        # peft marks the adapters, and only them, trainable; they train in float32 whatever the frozen dtype
        self._lora = [(name, p) for name, p in self.backbone.named_parameters() if p.requires_grad]
        for _, p in self._lora:
            p.data = p.data.float()

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    # -- text ---------------------------------------------------------------------------------------------
    @abstractmethod
    def _encode_prompts(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each prompt's (context (L, D), pooled (P,) or None); called without gradients."""

    def _text(self, prompts: list[str]) -> Conditioning:
        """The prompts' conditioning on the policy's device; embeddings are cached per prompt (on the CPU:
        SD3's with T5 take ~2.7 MB each) since the encoders are frozen and prompt sets are reused."""
        guided = self.guided_by_cfg and self.config.guidance_scale > 1
        wanted = set(prompts) | ({""} if guided else set())
        missing = sorted(p for p in wanted if p not in self._embeddings)
        if missing:
            # no autocast: the encoders' weights are all in their own dtypes, and autocast would push the layers
            # transformers keeps in float32 back to half precision
            with torch.no_grad():
                encoded = self._encode_prompts(missing)
            for prompt, (context, pooled) in zip(missing, encoded):
                self._embeddings[prompt] = (context.cpu(), None if pooled is None else pooled.cpu())

        def stack(items):
            return None if items[0] is None else torch.stack(items).to(self.device)

        contexts, pooled = zip(*(self._embeddings[p] for p in prompts))
        null = self._embeddings[""] if guided else (None, None)
        return Conditioning(
            stack(contexts),
            stack(pooled),
            None if null[0] is None else null[0][None].to(self.device),
            None if null[1] is None else null[1][None].to(self.device),
        )

    # -- the network --------------------------------------------------------------------------------------
    def _network_inputs(self, text: Conditioning, cfg: bool) -> list[torch.Tensor]:
        """The network's conditioning arguments: (B, ...) each, or (2B, ...) as [null, prompts] under guidance."""

        def batch(cond, null):
            return torch.cat([null.expand_as(cond), cond]) if cfg else cond

        inputs = [batch(text.context, text.null_context)]
        if text.pooled is not None:
            inputs.append(batch(text.pooled, text.null_pooled))
        return inputs

    def predict(self, x, t, text, network=None, *, guided=True):
        network = self.network if network is None else network
        cfg = guided and self.guided_by_cfg and self.config.guidance_scale > 1
        inputs = self._network_inputs(text, cfg)
        if cfg:  # one call on [null, cond]: the meter sees the 2B evaluations it costs
            x, t = torch.cat([x, x]), torch.cat([t, t])
        out = self._forward(network, x, t, *inputs).float()
        if not cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.config.guidance_scale * (cond - uncond)

    def _forward(self, network: nn.Module, *args) -> torch.Tensor:
        if self._adapters_enabled:
            with self._autocast():
                return network(*args)
        if torch.is_grad_enabled() and self.config.gradient_checkpointing:
            # checkpoint the whole reference call instead, so that its recomputation runs with the adapters off too
            return torch.utils.checkpoint.checkpoint(self._reference_forward, network, *args, use_reentrant=False)
        return self._reference_forward(network, *args)

    def _reference_forward(self, network: nn.Module, *args) -> torch.Tensor:
        with adapters_disabled(self.backbone), checkpointing_suspended(self.backbone), self._autocast():
            return network(*args)

    # -- latent space -------------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] from latents x (B, *latent_shape): the VAE decoder on
        x / scaling_factor + shift_factor, differentiable (reward gradients reach the chain through it)."""
        latents = x / self._scaling_factor + self._shift_factor
        # without a graph to keep, a few images at a time: a 1024 px decode holds GBs of activations per image
        chunk = len(latents) if torch.is_grad_enabled() else DECODE_BATCH
        with self._autocast():
            images = torch.cat([self.vae.decode(part, return_dict=False)[0] for part in latents.split(chunk)])
        return model_space_to_images(images.float())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, *latent_shape) of images (B, 3, H, W) in [0, 1]: the mean of the VAE encoder's
        distribution, (z - shift_factor) * scaling_factor. Without gradients: the VAE is frozen and the losses
        only noise these latents, so keeping the encoder's activations would waste memory."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images must be (B, {', '.join(map(str, self.image_shape))}) in [0, 1], got {tuple(images.shape)}"
            )
        with torch.no_grad(), self._autocast():
            posterior = self.vae.encode(images_to_model_space(images.to(self.device)), return_dict=False)[0]
        return (posterior.mean.float() - self._shift_factor) * self._scaling_factor

    # -- parameters ---------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA weights (none for a reference)."""
        return [p for _, p in self._lora] if self._adapters_enabled else []

    def frozen_copy(self) -> LoRALatentPolicy:
        """The reference policy: the base model, i.e. the same modules, prompt cache and meter hooks, called
        with the adapters off. No weights are copied; it has no trainable parameters."""
        reference = copy.copy(self)
        reference._adapters_enabled = False
        return reference

    def state_dict(self) -> dict:
        """The LoRA weights only, by parameter name."""
        return {name: p.detach().clone() for name, p in self._lora}

    def load_state_dict(self, state: dict) -> None:
        own = dict(self._lora)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"not this policy's LoRA weights: {len(missing)} missing (e.g. {missing[:1]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); a state_dict from a policy "
                f"with the same model and lora_target_modules is valid"
            )
        wrong = [name for name, p in own.items() if tuple(state[name].shape) != tuple(p.shape)]
        if wrong:
            raise ValueError(
                f"LoRA weight {wrong[0]} is {tuple(state[wrong[0]].shape)}, this policy's is "
                f"{tuple(own[wrong[0]].shape)}: saved with another lora_rank?"
            )
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])

    # -- loading ------------------------------------------------------------------------------------------
    @staticmethod
    def _latent_side(config: DiffusersConfig, vae, denoiser_factor: int) -> int:
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = vae_factor * denoiser_factor
        if config.resolution % multiple:
            raise ValueError(
                f"resolution must be a multiple of {multiple} for this model (the VAE downsamples by "
                f"{vae_factor}, the denoiser by {denoiser_factor}), got {config.resolution}"
            )
        return config.resolution // vae_factor

    @classmethod
    def _configure(cls, source, config) -> DiffusersConfig:
        """The family's config (its defaults if None) with `source`, when given, in place of its own."""
        config = config or cls.Config()
        if not isinstance(config, cls.Config):
            raise ValueError(f"{cls.__name__} takes a {cls.Config.__name__}, got a {type(config).__name__}")
        return config if source is None else replace(config, source=str(source))

    @staticmethod
    def _root(config: DiffusersConfig, components: list[str]) -> Path:
        """The pipeline directory of `config.source`, holding (at least) `components`."""
        return resolve_source(config.source, ["model_index.json"] + [f"{name}/*" for name in components])


def _load_model(cls, root: Path, name: str, dtype: torch.dtype):
    component_dir(root, name)
    # diffusers' models take torch_dtype, transformers' dtype; loading in the target dtype halves peak memory
    keyword = "torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"
    return cls.from_pretrained(root, subfolder=name, **{keyword: dtype})


class _UNetPolicy(LoRALatentPolicy):
    """The UNet families (SD and LCM): one CLIP text encoder, its last hidden state as the context."""

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        config,
        schedule: NoiseSchedule | None = None,
    ):
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} channels, the VAE makes "
                f"{vae.config.latent_channels}: not one model's components"
            )
        side = self._latent_side(config, vae, 2 ** (len(unet.config.block_out_channels) - 1))
        super().__init__(
            UNetDenoiser(unet, (unet.config.in_channels, side, side)),
            vae,
            [text_encoder],
            [tokenizer],
            config,
            schedule or SD_SCHEDULE,
        )

    def _encode_prompts(self, prompts):
        tokenizer, encoder = self.tokenizers[0], self.text_encoders[0]
        tokens = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        # as diffusers' pipelines: SD 1.x's CLIP attends to its padding
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(self.device) if use_mask else None
        hidden = encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return [(h, None) for h in hidden]

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, config=None):
        """The policy of a pipeline directory or hub id (`source` overrides `config.source`)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        config = cls._configure(source, config)
        root = cls._root(config, ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
        dtype = config.weight_dtype()
        # the cheap checks first, before gigabytes of weights load
        schedule = cls._schedule_from(root)
        tokenizer = load_tokenizer(root, "tokenizer", config.min_vocab, CLIPTokenizer)
        return cls(
            _load_model(UNet2DConditionModel, root, "unet", dtype),
            _load_model(AutoencoderKL, root, "vae", dtype),
            _load_model(CLIPTextModel, root, "text_encoder", dtype),
            tokenizer,
            config,
            schedule,
        )

    @classmethod
    def _schedule_from(cls, root: Path) -> NoiseSchedule:
        return noise_schedule_from(root)


class StableDiffusionPolicy(_UNetPolicy, DiffusionPolicy):
    """Stable Diffusion 1.x: a UNet2DConditionModel predicting eps in a VAE's latent space, CLIP-conditioned,
    sampled by DDIM with classifier-free guidance."""

    Config = StableDiffusionConfig
    default_steps = 50


class LatentConsistencyPolicy(_UNetPolicy, ConsistencyPolicy):
    """A latent consistency model (LCM-Dreamshaper-v7's layout): the UNet also takes LCM's embedding of the
    guidance w = guidance_scale - 1 (`time_cond_proj_dim`), so one call of B gives the guided prediction."""

    Config = LatentConsistencyConfig
    guided_by_cfg = False

    def __init__(self, unet, vae, text_encoder, tokenizer, config, schedule=None):
        if unet.config.time_cond_proj_dim is None:
            raise ValueError(
                "not a latent consistency model: its UNet has no time_cond_proj_dim (the guidance "
                "embedding LCM conditions on)"
            )
        super().__init__(unet, vae, text_encoder, tokenizer, config, schedule)

    def _network_inputs(self, text, cfg):
        w = torch.full((len(text.context),), self.config.guidance_scale - 1, device=text.context.device)
        return [text.context, guidance_scale_embedding(w, self.backbone.config.time_cond_proj_dim)]

    @classmethod
    def _schedule_from(cls, root):
        config = read_scheduler_config(root)
        # the consistency sampler's grid and boundary scalings are LCMScheduler's at these constants
        for key, expected in (("original_inference_steps", ORIGINAL_STEPS), ("timestep_scaling", TIMESTEP_SCALING)):
            if config.get(key, expected) != expected:
                raise ValueError(
                    f"{root}'s scheduler has {key} = {config[key]}; the consistency sampler implements {expected}"
                )
        return noise_schedule_from(root)


class StableDiffusion3Policy(LoRALatentPolicy, FlowPolicy):
    """Stable Diffusion 3: an MM-DiT (SD3Transformer2DModel) predicting the flow velocity in a 16-channel VAE's
    latent space, conditioned on two CLIP encoders (and T5, optional), on FlowMatchEulerDiscreteScheduler's
    shifted grid, with classifier-free guidance."""

    Config = StableDiffusion3Config
    default_steps = 28

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        text_encoders: list,
        tokenizers: list,
        config: StableDiffusion3Config,
        shift: float = 3.0,
    ):
        """text_encoders, tokenizers: the two CLIPs' (CLIPTextModelWithProjection) and T5's, or None for T5."""
        if len(text_encoders) != 3 or len(tokenizers) != 3:
            raise ValueError("SD3 takes three text encoders and tokenizers (the two CLIPs', then T5's or None)")
        if transformer.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the transformer takes {transformer.config.in_channels} channels, the VAE makes "
                f"{vae.config.latent_channels}: not one model's components"
            )
        clip_width = sum(encoder.config.hidden_size for encoder in text_encoders[:2])
        if clip_width > transformer.config.joint_attention_dim:
            raise ValueError(
                f"the CLIP encoders' {clip_width} features exceed the transformer's joint_attention_dim "
                f"{transformer.config.joint_attention_dim}: not one model's components"
            )
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        patch = transformer.config.patch_size
        side = self._latent_side(config, vae, patch)
        if transformer.config.pos_embed_max_size and side // patch > transformer.config.pos_embed_max_size:
            raise ValueError(
                f"resolution {config.resolution} is past the transformer's position embeddings "
                f"({transformer.config.pos_embed_max_size} patches a side)"
            )
        self.shift = shift
        super().__init__(
            SD3Denoiser(transformer, (transformer.config.in_channels, side, side)),
            vae,
            text_encoders,
            tokenizers,
            config,
        )

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """FlowMatchEulerDiscreteScheduler's grid: `steps` sigmas evenly spaced from 1 down to the scheduler's
        smallest training sigma (itself already shifted), then shifted (so the smallest is shifted twice, as
        in diffusers): (steps,) float64, descending; the last step lands on 0."""
        if steps < 1:
            raise ValueError(f"a flow model samples with at least 1 step, got {steps}")
        smallest = shift_sigmas(torch.tensor(1 / TIMESTEP_SCALE, dtype=torch.float64), self.shift)
        return shift_sigmas(torch.linspace(1.0, float(smallest), steps, dtype=torch.float64), self.shift)

    def _encode_prompts(self, prompts):
        # diffusers' StableDiffusion3Pipeline.encode_prompt: each CLIP's penultimate hidden states, side by side
        # and zero-padded to T5's width, then T5's tokens (zeros without T5); the CLIPs' pooled projections
        contexts, pooled = [], []
        length = self.tokenizers[0].model_max_length
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2]):
            ids = tokenizer(
                prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            pooled.append(out[0])
            contexts.append(out.hidden_states[-2])
        clip = torch.cat(contexts, dim=-1)
        t5_encoder, t5_tokenizer = self.text_encoders[2], self.tokenizers[2]
        if t5_encoder is None:
            t5 = clip.new_zeros(len(prompts), self.config.t5_max_length, self.backbone.config.joint_attention_dim)
        else:
            ids = t5_tokenizer(
                prompts,
                padding="max_length",
                max_length=self.config.t5_max_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids
            t5 = t5_encoder(ids.to(self.device))[0]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        context = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
        return list(zip(context, torch.cat(pooled, dim=-1)))

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, config: StableDiffusion3Config | None = None):
        """The policy of a pipeline directory or hub id (`source` overrides `config.source`)."""
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

        config = cls._configure(source, config)
        components = ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]
        if config.use_t5:
            components += ["text_encoder_3", "tokenizer_3"]
        root = cls._root(config, components)
        dtype = config.weight_dtype()
        scheduler = read_scheduler_config(root)
        if scheduler.get("use_dynamic_shifting"):
            raise ValueError(
                f"{root}'s scheduler shifts its grid by resolution (use_dynamic_shifting); "
                f"this policy implements SD3's fixed shift"
            )
        if scheduler.get("num_train_timesteps", TIMESTEP_SCALE) != TIMESTEP_SCALE:
            raise ValueError(
                f"{root}'s scheduler has {scheduler['num_train_timesteps']} training timesteps; the "
                f"flow policy feeds the network 1000 t"
            )
        use_t5 = config.use_t5 and (root / "text_encoder_3").is_dir()
        # the tokenizers' checks before gigabytes of weights load
        tokenizers = [
            load_tokenizer(root, name, config.min_vocab, CLIPTokenizer) for name in ("tokenizer", "tokenizer_2")
        ]
        tokenizers.append(load_tokenizer(root, "tokenizer_3", config.min_vocab) if use_t5 else None)
        encoders = [
            _load_model(CLIPTextModelWithProjection, root, name, dtype) for name in ("text_encoder", "text_encoder_2")
        ]
        encoders.append(_load_model(T5EncoderModel, root, "text_encoder_3", dtype) if use_t5 else None)
        return cls(
            _load_model(SD3Transformer2DModel, root, "transformer", dtype),
            _load_model(AutoencoderKL, root, "vae", dtype),
            encoders,
            tokenizers,
            config,
            shift=float(scheduler.get("shift", 3.0)),
        )
