"""The UNet families: Stable Diffusion 1.x (epsilon prediction, DDIM) and latent consistency models (LCM)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.consistency import ORIGINAL_STEPS, TIMESTEP_SCALING, ConsistencyPolicy
from models.diffusion import NoiseSchedule
from models.policy import DiffusionPolicy
from models.scale.config import SD_SCHEDULE, LatentConsistencyConfig, StableDiffusionConfig
from models.scale.lora import LoRALatentPolicy
from models.scale.pipelines import load_component, load_tokenizer, noise_schedule_from, read_scheduler_config


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


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's embedding of guidance weights w (B,) -> (B, dim): sinusoids of 1000 w, as timesteps are embedded
    (diffusers' LatentConsistencyModelPipeline.get_guidance_scale_embedding)."""
    half = dim // 2
    # float32 throughout, in the pipeline's order of operations, so that the embedding matches it exactly
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * frequencies[None, :].to(w.device)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


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
        if config.torch_device().type == "cpu" and side <= 32:
            # SDPA's CPU flash kernel recomputes the attention in its backward, which at short sequences costs more
            # than keeping the softmax: on the tiny SD pipeline of bench/throughput/cpu.py diffusers' classic
            # processor, which keeps it, took a self-attention's forward and backward in 11.6 ms instead of 14.9, a
            # cross-attention's in 5.2 instead of 6.1 (batch 32, 64 queries, head dimension 8, one thread), and
            # KeptSoftmaxAttention computes the classic processor's products faster (attention.py). The kept scores
            # are side^4 floats per head and image at full resolution: 4 MB at a 32 x 32 latent, 64 MB at SD 1.5's
            # 64 x 64, where flash's recomputation is the better trade. Set before the policy is built, so that a
            # full fine-tune's reference (a copy of the UNet) computes as the policy does
            from models.scale.attention import attend_with_kept_softmax

            attend_with_kept_softmax(unet)
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
            load_component(UNet2DConditionModel, root, "unet", dtype),
            load_component(AutoencoderKL, root, "vae", dtype),
            load_component(CLIPTextModel, root, "text_encoder", dtype),
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
