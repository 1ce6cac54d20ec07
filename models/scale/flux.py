"""FLUX.1: a rectified-flow transformer on packed latents, guided by an embedding of the guidance weight, on a time grid
shifted by the image's size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from models.flow import TIMESTEP_SCALE, FlowPolicy
from models.scale.config import FluxConfig
from models.scale.lora import LoRALatentPolicy
from models.scale.pipelines import load_component, load_tokenizer, read_scheduler_config

PACK = 2
"""FLUX packs each 2 x 2 patch of latents into one token (its 16 channels become 64)."""


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2 x 2 patch a token, in row-major order, as FluxPipeline packs."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // PACK, PACK, w // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`: (B, H/2 * W/2, 4C) -> (B, C, H, W)."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // PACK, width // PACK, channels // (PACK * PACK), PACK, PACK)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, channels // (PACK * PACK), height, width)


def image_ids(height: int, width: int) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids of the packed tokens: (0, row, column), as FluxPipeline makes them."""
    rows, columns = torch.meshgrid(torch.arange(height // PACK), torch.arange(width // PACK), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3).float()


def shift_exponentially(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's dynamic (exponential) time shift: e^mu / (e^mu + 1/sigma - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def size_shift(tokens: int, scheduler: dict) -> float:
    """mu for an image of `tokens` packed tokens: linear between (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift) of the scheduler's config (FluxPipeline's calculate_shift)."""
    base_len, max_len = scheduler.get("base_image_seq_len", 256), scheduler.get("max_image_seq_len", 4096)
    base_shift, max_shift = scheduler.get("base_shift", 0.5), scheduler.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return tokens * slope + base_shift - slope * base_len


class FluxDenoiser(nn.Module):
    """A FluxTransformer2DModel as the policy's network: latents in, velocity out, in the (B, C, H, W) layout the
    flow policy works in; t is the flow time times 1000 (FLUX takes the time itself), and the guidance weight goes in
    through the model's guidance embedding (FLUX.1-dev's), not through a second pass."""

    def __init__(self, transformer: Any, latent_shape: tuple[int, int, int], guidance: float):
        super().__init__()
        self.model = transformer
        self.image_shape = latent_shape
        # FLUX.1-dev conditions on the guidance weight; a model without the embedding (schnell) takes none
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self.register_buffer("ids", image_ids(*latent_shape[1:]), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        guidance = None if self.guidance is None else torch.full_like(t, self.guidance)
        tokens = self.model(
            hidden_states=pack(x),
            timestep=t / TIMESTEP_SCALE,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=context,
            txt_ids=context.new_zeros(context.shape[1], 3),
            img_ids=self.ids.to(x.dtype),
            return_dict=False,
        )[0]
        return unpack(tokens, *x.shape[-2:])


class FluxPolicy(LoRALatentPolicy, FlowPolicy):
    """FLUX.1 (dev): a FluxTransformer2DModel predicting the flow velocity of 16-channel VAE latents packed in 2 x 2
    patches, conditioned on T5's tokens and CLIP's pooled embedding, with the guidance weight embedded (no classifier-
    free guidance pass), on FlowMatchEulerDiscreteScheduler's grid shifted by the image's token count."""

    Config = FluxConfig
    default_steps = 28
    guided_by_cfg = False  # FLUX.1-dev embeds its guidance weight; one network call per step

    def __init__(self, transformer: Any, vae: Any, text_encoders: list, tokenizers: list, config, scheduler: dict):
        """text_encoders, tokenizers: CLIP's and T5's (None for T5: zeros in its place); scheduler: its config."""
        if len(text_encoders) != 2 or len(tokenizers) != 2:
            raise ValueError("FLUX takes two text encoders and tokenizers (CLIP's, then T5's or None)")
        if transformer.config.in_channels != vae.config.latent_channels * PACK * PACK:
            raise ValueError(
                f"the transformer takes {transformer.config.in_channels} channels, the VAE's 2 x 2 patches make "
                f"{vae.config.latent_channels * PACK * PACK}: not one model's components"
            )
        if not scheduler.get("use_dynamic_shifting"):
            raise ValueError("FLUX's scheduler shifts its grid by the image's size (use_dynamic_shifting): not FLUX's")
        side = self._latent_side(config, vae, PACK)
        self.mu = size_shift((side // PACK) ** 2, scheduler)
        self.t5_shape = (config.t5_max_length, transformer.config.joint_attention_dim)  # T5's zeros, without T5
        super().__init__(
            FluxDenoiser(transformer, (vae.config.latent_channels, side, side), config.guidance_scale),
            vae,
            text_encoders,
            tokenizers,
            config,
        )

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """FluxPipeline's grid: `steps` sigmas evenly spaced from 1 down to 1 / steps, shifted exponentially by mu
        (set by the image's token count): (steps,) float64, descending; the last step lands on 0."""
        if steps < 1:
            raise ValueError(f"a flow model samples with at least 1 step, got {steps}")
        sigmas = torch.from_numpy(np.linspace(1.0, 1 / steps, steps))
        return shift_exponentially(sigmas, self.mu)

    def _encode_prompts(self, prompts):
        # FluxPipeline.encode_prompt: T5's last hidden states are the tokens, CLIP's pooled output the pooled vector
        clip_tokenizer, t5_tokenizer = self.tokenizers
        clip_encoder, t5_encoder = self.text_encoders
        ids = clip_tokenizer(
            prompts,
            padding="max_length",
            max_length=clip_tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = clip_encoder(ids.to(self.device), output_hidden_states=False).pooler_output
        if t5_encoder is None:
            context = pooled.new_zeros(len(prompts), *self.t5_shape)
        else:
            ids = t5_tokenizer(
                prompts,
                padding="max_length",
                max_length=self.t5_shape[0],
                truncation=True,
                return_tensors="pt",
            ).input_ids
            context = t5_encoder(ids.to(self.device), output_hidden_states=False)[0]
        return list(zip(context, pooled))

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, config: FluxConfig | None = None):
        """The policy of a pipeline directory or hub id (`source` overrides `config.source`)."""
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel

        config = cast(FluxConfig, cls._configure(source, config))
        components = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
        if config.use_t5:
            components += ["text_encoder_2", "tokenizer_2"]
        root = cls._root(config, components)
        dtype = config.weight_dtype()
        use_t5 = config.use_t5 and (root / "text_encoder_2").is_dir()
        # the tokenizers' checks before gigabytes of weights load
        tokenizers = [
            load_tokenizer(root, "tokenizer", config.min_vocab, CLIPTokenizer),
            load_tokenizer(root, "tokenizer_2", config.min_vocab) if use_t5 else None,
        ]
        encoders = [
            load_component(CLIPTextModel, root, "text_encoder", dtype),
            load_component(T5EncoderModel, root, "text_encoder_2", dtype) if use_t5 else None,
        ]
        return cls(
            load_component(FluxTransformer2DModel, root, "transformer", dtype),
            load_component(AutoencoderKL, root, "vae", dtype),
            encoders,
            tokenizers,
            config,
            read_scheduler_config(root),
        )
