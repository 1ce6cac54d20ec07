"""Tiny random-initialised models of the real diffusers and transformers classes, written to disk in the
layouts their hubs use: what the `scale-tiny` world and the tests load through the same `from_pretrained`
paths as the full-size checkpoints, offline and on a CPU in seconds. They are never results.

  write_tiny_pipelines(root)     root/sd (UNet + DDIM), root/lcm (UNet with a w-embedding + LCMScheduler),
                                 root/sd3 (SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler, no T5) and,
                                 with t5=True, root/sd3-t5; 16 px images, 8 x 8 latents.
  write_tiny_clip(directory)     a CLIPModel with its tokenizer (byte-level, printable ASCII); the scale world writes
                                 a random LAION-aesthetic head (rewards/aesthetic.py) beside it.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import torch

MAX_TOKENS = 16
RESOLUTION = 16
"""Image side of the tiny pipelines: their VAE downsamples by 2, so 8 x 8 latents."""
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CLIP_WIDTH, CLIP_IMAGE, CLIP_PATCH, CLIP_EMBED = 32, 32, 8, 16
AESTHETIC_WIDTHS = (CLIP_EMBED, 24, 12, 8, 4, 1)


def letters_tokenizer(folder: Path, max_length: int = MAX_TOKENS):
    """A real CLIP BPE tokenizer on a tiny vocabulary (letters, digits and one merge), saved in `folder`."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    characters = [c + suffix for c in string.ascii_lowercase + string.digits for suffix in ("", "</w>")]
    for token in characters + ["th", "the</w>"]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"})
    )
    return CLIPTokenizer.from_pretrained(folder)


def text_config(hidden: int, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_unet(time_cond_proj_dim=None, sample_size: int = 8):
    """A 985k-parameter UNet2DConditionModel; `sample_size`: the latent side its pipeline samples at by default."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def tiny_vae(**kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=RESOLUTION,
        **kwargs,
    )


SD3_VAE = dict(shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False)
"""What sets SD3's VAE apart from SD 1.x's (besides its 16 latent channels): its shift and scale, no quant convs."""


def tiny_mmdit(mmdit_x: bool = False):
    """SD3's MMDiT at toy size; `mmdit_x`: SD3.5's MMDiT-X (a second, image-only attention in the first block, RMS
    norms on queries and keys)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        pos_embed_max_size=8,
        **({"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if mmdit_x else {}),
    )


def tiny_flux():
    """FLUX.1-dev's transformer at toy size: one double and one single block, its guidance embedding, 2 x 2 packed
    16-channel latents (64 input channels)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )


FLUX_VAE = dict(shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
"""FLUX's VAE's shift and scale (16 latent channels, no quant convs, as SD3's)."""
FLUX_SCHEDULER: dict[str, Any] = dict(
    shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
)
"""FLUX.1-dev's FlowMatchEulerDiscreteScheduler: the grid shifted by the image's token count."""


def write_tiny_pipelines(root: Path, *, t5: bool = False, seed: int = 0) -> Path:
    """Writes the tiny SD, LCM and SD3 pipelines (see the module docstring) with the pipelines' own save_pretrained."""
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    root = Path(root)
    tokenizer = letters_tokenizer(root / "vocab")
    torch.manual_seed(seed)
    StableDiffusionPipeline(
        vae=tiny_vae(latent_channels=4),
        text_encoder=CLIPTextModel(text_config(32)),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        scheduler=DDIMScheduler(**SD_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    ).save_pretrained(root / "sd")
    LatentConsistencyModelPipeline(
        vae=tiny_vae(latent_channels=4),
        text_encoder=CLIPTextModel(text_config(32)),
        tokenizer=tokenizer,
        unet=tiny_unet(time_cond_proj_dim=32),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        scheduler=LCMScheduler(
            **SD_SCHEDULER,
            original_inference_steps=50,
            timestep_scaling=10.0,
            set_alpha_to_one=True,
            clip_sample=False,
            steps_offset=1,
        ),
    ).save_pretrained(root / "lcm")
    sd3 = dict(
        vae=tiny_vae(latent_channels=16, **SD3_VAE),
        transformer=tiny_mmdit(),
        text_encoder=CLIPTextModelWithProjection(text_config(16, projection=16)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(text_config(16, projection=16)),
        tokenizer_2=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    StableDiffusion3Pipeline(**sd3, text_encoder_3=None, tokenizer_3=None).save_pretrained(root / "sd3")
    if t5:
        encoder = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
        StableDiffusion3Pipeline(**sd3, text_encoder_3=encoder, tokenizer_3=tokenizer).save_pretrained(root / "sd3-t5")
    # SD3.5's pipeline is SD3's around the MMDiT-X (the same VAE and encoders here), its transformer made last so that
    # the pipelines above keep the weights they had before it existed
    sd35: dict[str, Any] = {**sd3, "transformer": tiny_mmdit(mmdit_x=True), "text_encoder_3": None, "tokenizer_3": None}
    StableDiffusion3Pipeline(**sd35).save_pretrained(root / "sd35")
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=tiny_vae(latent_channels=16, **FLUX_VAE),
        text_encoder=CLIPTextModel(text_config(32)),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)),
        tokenizer_2=tokenizer,
        transformer=tiny_flux(),
    ).save_pretrained(root / "flux")
    return root


def ascii_clip_tokenizer(folder: Path):
    """A byte-level BPE CLIP tokenizer with no merges over printable ASCII: 190 tokens, <|endoftext|> last."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(i) for i in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder)


def tiny_clip_config(vocab_size: int = 190, logit_scale: float = math.log(1 / 0.07)):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=CLIP_WIDTH,
            intermediate_size=2 * CLIP_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            hidden_size=CLIP_WIDTH,
            intermediate_size=2 * CLIP_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_IMAGE,
            patch_size=CLIP_PATCH,
            hidden_act="gelu",
        ),
        projection_dim=CLIP_EMBED,
        logit_scale_init_value=logit_scale,
    )


def write_tiny_clip(directory: Path, *, logit_scale: float = math.log(1 / 0.07), seed: int = 0) -> Path:
    """A tiny CLIPModel with its tokenizer in `directory`, as hub repositories hold them."""
    from transformers import CLIPModel

    directory = Path(directory)
    torch.manual_seed(seed)
    CLIPModel(tiny_clip_config(logit_scale=logit_scale)).save_pretrained(directory)
    ascii_clip_tokenizer(directory)
    return directory
