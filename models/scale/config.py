"""How a diffusers family is loaded and fine-tuned: source, resolution, LoRA, precision, guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from models.diffusion import NoiseSchedule

FINETUNES = ("lora", "full")
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
    finetune: str = "lora"
    """What trains: lora, adapters on `lora_target_modules` over the frozen denoiser; full, every weight of the
    denoiser (float32 master weights; the lora_* options unused), which `bench run --sharding fsdp2` shards over the
    processes. Not part of the base model's identity (ScaleWorld.model_hash): the run's sharding names it."""
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
        if self.finetune not in FINETUNES:
            raise ValueError(f"finetune must be one of {', '.join(FINETUNES)}, got {self.finetune!r}")
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


@dataclass(frozen=True)
class StableDiffusion35Config(StableDiffusion3Config):
    source: str = "stabilityai/stable-diffusion-3.5-medium"
    """Hub id or local pipeline directory of a Stable Diffusion 3.5 model (SD3.5-M: the MMDiT-X, whose first 13 blocks
    add a second, image-only attention, with RMS-normalised queries and keys; SD3's pipeline and scheduler)."""
    resolution: int = 512
    """Side of the square images in pixels: 512, at which Flow-GRPO fine-tunes SD3.5-M (its native side is 1024)."""
    guidance_scale: float = 4.5
    """Classifier-free guidance weight (SD3.5-M's recommended 4.5, Flow-GRPO's; 1: none)."""


@dataclass(frozen=True)
class FluxConfig(DiffusersConfig):
    source: str = "black-forest-labs/FLUX.1-dev"
    """Hub id or local pipeline directory of a FLUX.1 model with a guidance embedding (FLUX.1-dev)."""
    resolution: int = 512
    """Side of the square images in pixels (a multiple of 16: the VAE's 8 times FLUX's 2 x 2 packing)."""
    guidance_scale: float = 3.5
    """The guidance weight FLUX.1-dev's guidance embedding conditions on (its pipeline's default 3.5); no second
    network pass."""
    lora_rank: int = 32
    """Rank r of the LoRA adapters."""
    lora_alpha: float = 64.0
    """LoRA scaling numerator."""
    lora_target_modules: tuple[str, ...] = SD3_ATTENTION_PROJECTIONS
    """The attention projections of both streams in the double blocks (FLUX names them as SD3), and the single
    blocks' queries, keys and values."""
    use_t5: bool = True
    """Load the T5 encoder (text_encoder_2); False, or a source without it: zeros in its place (throughput only: FLUX
    reads the prompt from T5)."""
    t5_max_length: int = 512
    """T5 tokens per prompt (FLUX.1-dev's max_sequence_length)."""

    def __post_init__(self):
        super().__post_init__()
        if self.t5_max_length < 1:
            raise ValueError(f"t5_max_length must be >= 1, got {self.t5_max_length}")
