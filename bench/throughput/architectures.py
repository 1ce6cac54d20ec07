"""The real-size architectures `bench throughput` times, with random weights (nothing to download), and at --size
tiny the toy models of models/tiny_pipelines.py; the LAION aesthetic predictor's architecture as the reward."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from models.scale.config import (
    FluxConfig,
    LatentConsistencyConfig,
    StableDiffusion3Config,
    StableDiffusion35Config,
    StableDiffusionConfig,
)
from models.scale.flux import FluxPolicy
from models.scale.sd3 import StableDiffusion3Policy, StableDiffusion35Policy
from models.scale.unet import LatentConsistencyPolicy, StableDiffusionPolicy
from models.tiny_pipelines import (
    FLUX_SCHEDULER,
    SD3_VAE,
    letters_tokenizer,
    text_config,
    tiny_flux,
    tiny_mmdit,
    tiny_unet,
    tiny_vae,
)
from models.tiny_pipelines import RESOLUTION as TINY_RESOLUTION


def clip_text(size: str, hidden: int, layers: int, heads: int, projection: int | None = None):
    """A CLIP text encoder of that size (with a projection: SD3's kind), or at --size tiny the tiny pipelines' one."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if size == "tiny":  # SD3's two CLIPs side by side must fit the tiny MMDiT's 32-d context
        return (
            CLIPTextModelWithProjection(text_config(16, projection=16))
            if projection
            else CLIPTextModel(text_config(32))
        )
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if hidden == 768 else "gelu",
        projection_dim=projection or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def vae(size: str, latent_channels: int):
    """SD's VAE (SD3's with 16 latent channels), or at --size tiny the tiny pipelines' one."""
    from diffusers import AutoencoderKL

    sd3 = SD3_VAE if latent_channels == 16 else {}
    if size == "tiny":
        return tiny_vae(latent_channels=latent_channels, **sd3)
    blocks = (128, 256, 512, 512)
    return AutoencoderKL(
        block_out_channels=blocks,
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        **sd3,
    )


def unet(size: str, guidance_embedding: bool):
    """SD 1.5's UNet (with LCM's guidance embedding: LCM-Dreamshaper-v7's), or at --size tiny the tiny pipelines'."""
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        return tiny_unet(time_cond_proj_dim=32 if guidance_embedding else None)
    # diffusers' defaults but the 768-d CLIP context
    return UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        time_cond_proj_dim=256 if guidance_embedding else None,
    )


def mmdit(size: str, mmdit_x: bool = False):
    """SD3-medium's MMDiT (`mmdit_x`: SD3.5-medium's MMDiT-X), or at --size tiny the tiny pipelines' one."""
    from diffusers import SD3Transformer2DModel

    if size == "tiny":
        return tiny_mmdit(mmdit_x)
    # SD3-medium's transformer config; SD3.5-medium's differs in its position table and its MMDiT-X blocks
    medium: dict[str, Any] = dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
    )
    if mmdit_x:
        return SD3Transformer2DModel(
            **medium, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"
        )
    return SD3Transformer2DModel(**medium, pos_embed_max_size=192)


def flux_transformer(size: str):
    """FLUX.1-dev's transformer, or at --size tiny the tiny pipelines' one."""
    from diffusers import FluxTransformer2DModel

    if size == "tiny":
        return tiny_flux()
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


def prompt_tokenizer(size: str):
    """A real CLIP tokenizer class on a letters-only vocabulary (the weights are random anyway), padding to CLIP's 77
    tokens at the real size."""
    with tempfile.TemporaryDirectory() as folder:
        return letters_tokenizer(Path(folder), max_length=77 if size == "real" else 16)


def build_policy(model: str, size: str, tokenizer, *, checkpointing: bool, device: str | None, finetune: str = "lora"):
    """The model's policy with random weights, its modules initialised on their device (fast on a GPU; free on the
    meta device); the policy itself is built outside that context, so its schedule stays on the CPU as it loads."""
    # the real size at each config's own resolution (512 px, SD3's 1024 px, SD3.5's 512 px)
    common: dict[str, Any] = dict(
        source="random-weights",
        min_vocab=0,
        gradient_checkpointing=checkpointing,
        device=device,
        finetune=finetune,
        **({"resolution": TINY_RESOLUTION} if size == "tiny" else {}),
    )
    if model in ("sd3", "sd35"):
        config_class = StableDiffusion35Config if model == "sd35" else StableDiffusion3Config
        config = config_class(
            **common,
            use_t5=False,
            t5_max_length=256 if size == "real" else 8,
            **({} if size == "real" else {"lora_rank": 4, "lora_alpha": 4.0}),
        )
        with config.torch_device():
            modules = (
                mmdit(size, mmdit_x=model == "sd35"),
                vae(size, 16),
                [clip_text(size, 768, 12, 12, projection=768), clip_text(size, 1280, 32, 20, projection=1280)],
            )
        transformer, autoencoder, encoders = modules
        policy_class = StableDiffusion35Policy if model == "sd35" else StableDiffusion3Policy
        return policy_class(transformer, autoencoder, [*encoders, None], [tokenizer, tokenizer, None], config)
    if model == "flux":
        config = FluxConfig(
            **common,
            use_t5=False,
            t5_max_length=512 if size == "real" else 8,
            **({} if size == "real" else {"lora_rank": 4, "lora_alpha": 4.0}),
        )
        with config.torch_device():
            modules = (flux_transformer(size), vae(size, 16), clip_text(size, 768, 12, 12))
        transformer, autoencoder, clip = modules
        return FluxPolicy(transformer, autoencoder, [clip, None], [tokenizer, None], config, FLUX_SCHEDULER)
    policy_class, config = (
        (LatentConsistencyPolicy, LatentConsistencyConfig(**common))
        if model == "lcm"
        else (StableDiffusionPolicy, StableDiffusionConfig(**common))
    )
    with config.torch_device():
        modules = (unet(size, model == "lcm"), vae(size, 4), clip_text(size, 768, 12, 12))
    return policy_class(*modules, tokenizer, config)


def aesthetic_reward(size: str, device: torch.device, dtype: torch.dtype):
    from transformers import CLIPConfig, CLIPModel

    from models.tiny_pipelines import tiny_clip_config
    from rewards.aesthetic import PUBLISHED_WIDTHS, AestheticReward, ScoreMLP

    if size == "real":  # CLIP ViT-L/14
        config = CLIPConfig(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            vision_config=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
            ),
            projection_dim=768,
        )
        widths = PUBLISHED_WIDTHS
    else:
        config, widths = tiny_clip_config(), (16, 24, 12, 8, 4, 1)
    with torch.device(device):
        return AestheticReward(CLIPModel(config).to(dtype=dtype), ScoreMLP(widths))
