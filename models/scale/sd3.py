"""Stable Diffusion 3 and 3.5: an MM-DiT predicting the flow velocity on a shifted time grid."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.flow import TIMESTEP_SCALE, FlowPolicy
from models.scale.config import StableDiffusion3Config, StableDiffusion35Config
from models.scale.lora import LoRALatentPolicy
from models.scale.pipelines import load_component, load_tokenizer, read_scheduler_config


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


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift sigma' = shift s / (1 + (shift - 1) s) (more steps at high noise for shift > 1): any shape."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


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
            load_component(CLIPTextModelWithProjection, root, name, dtype)
            for name in ("text_encoder", "text_encoder_2")
        ]
        encoders.append(load_component(T5EncoderModel, root, "text_encoder_3", dtype) if use_t5 else None)
        return cls(
            load_component(SD3Transformer2DModel, root, "transformer", dtype),
            load_component(AutoencoderKL, root, "vae", dtype),
            encoders,
            tokenizers,
            config,
            shift=float(scheduler.get("shift", 3.0)),
        )


class StableDiffusion35Policy(StableDiffusion3Policy):
    """Stable Diffusion 3.5 (Medium): SD3's policy, its pipeline, scheduler and text encoders, on the MMDiT-X
    (SD3Transformer2DModel with `dual_attention_layers` and `qk_norm` in its config, which the class reads from the
    checkpoint); LoRA adapts the second attention's projections too (their names end as the first's)."""

    Config = StableDiffusion35Config
    default_steps = 40  # SD3.5-M's recommended steps
