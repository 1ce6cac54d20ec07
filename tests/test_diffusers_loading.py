"""The diffusers families (SD, LCM, SD3, FLUX) on tiny random-initialised models of the real classes, loaded through
`from_pretrained` offline on the CPU: their deterministic samplers and time grids against diffusers' own pipelines
and schedulers, and loading that refuses what it cannot use."""

import time

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
)
from tiny_diffusers import FAMILIES, PROMPTS, load

from models.diffusion import NoiseSchedule
from models.scale.config import (
    DECODE_BATCH,
    LatentConsistencyConfig,
    StableDiffusion3Config,
    StableDiffusionConfig,
)
from models.scale.flux import pack, size_shift, unpack
from models.scale.pipelines import noise_schedule_from
from models.scale.sd3 import StableDiffusion3Policy
from models.scale.unet import LatentConsistencyPolicy, StableDiffusionPolicy, guidance_scale_embedding
from models.tiny_pipelines import FLUX_SCHEDULER, RESOLUTION, SD_SCHEDULER


# -- the deterministic samplers against diffusers' ----------------------------------------------------------
@pytest.mark.parametrize("family", ["sd", "lcm", "sd3", "sd3-t5", "flux"])
def test_the_deterministic_sampler_is_diffusers_pipeline(pipelines, family):
    """Prompt encoding, guidance, the sampler and the VAE's scaling, all at once: our chain and the pipeline's
    give the same images from the same starting latents (and, for LCM, the same re-noising draws)."""
    steps, guidance = 3, 3.0
    if family == "sd":
        policy, pipeline = load(pipelines, "sd"), StableDiffusionPipeline.from_pretrained(pipelines / "sd")  # DDIM
        kwargs = dict(eta=0.0)
    elif family == "lcm":
        policy = load(pipelines, "lcm")
        pipeline = LatentConsistencyModelPipeline.from_pretrained(pipelines / "lcm")
        kwargs = {}
    elif family == "flux":  # the guidance embedded, T5 and CLIP, the size-shifted grid, packed latents
        policy, pipeline = load(pipelines, "flux"), FluxPipeline.from_pretrained(pipelines / "flux")
        kwargs = dict(max_sequence_length=8)
    else:
        policy = StableDiffusion3Policy.from_pretrained(
            pipelines / family,
            config=StableDiffusion3Config(
                resolution=RESOLUTION, guidance_scale=guidance, min_vocab=50, t5_max_length=8
            ),
        )
        assert (policy.text_encoders[2] is None) == (family == "sd3")
        t5 = {} if family == "sd3-t5" else dict(text_encoder_3=None, tokenizer_3=None)
        pipeline = StableDiffusion3Pipeline.from_pretrained(pipelines / family, **t5)
        kwargs = dict(max_sequence_length=8)
    with torch.no_grad():
        ours = policy.sample(PROMPTS, steps, torch.Generator().manual_seed(2)).images
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn((2, *policy.latent_shape), generator=generator)
    latents = pack(latents) if family == "flux" else latents  # FluxPipeline takes its latents packed
    theirs = pipeline(
        PROMPTS,
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents,
        generator=generator,
        output_type="pt",
        **kwargs,
    ).images
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=2e-4), (ours - theirs).abs().max()


def test_scaled_linear_schedule_matches_diffusers_ddim(pipelines):
    schedule = NoiseSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert noise_schedule_from(pipelines / "sd") == schedule
    scheduler = DDIMScheduler(**SD_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    # diffusers keeps alpha_bar in float32, the schedule in float64
    assert torch.allclose(schedule.alphas_cumprod().float(), scheduler.alphas_cumprod, atol=1e-6, rtol=0)
    assert not torch.allclose(NoiseSchedule().alphas_cumprod().float(), scheduler.alphas_cumprod, atol=1e-3)
    for steps in (1, 4, 20, 50):
        scheduler.set_timesteps(steps)
        assert schedule.sampling_timesteps(steps).tolist() == scheduler.timesteps.tolist()
    with pytest.raises(ValueError, match="beta_schedule must be one of linear, scaled_linear"):
        NoiseSchedule(beta_schedule="cosine")


def test_sd3_grid_is_the_shifted_flow_match_grid(pipelines):
    policy = load(pipelines, "sd3")
    assert policy.shift == 3.0
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for steps in (1, 4, 10, 28):
        scheduler.set_timesteps(steps)
        grid = policy.sampling_timesteps(steps)
        assert grid.dtype == torch.float64 and grid[0] == 1
        assert torch.allclose(grid.float(), scheduler.sigmas[:-1], atol=1e-6, rtol=0)
        assert scheduler.sigmas[-1] == 0  # the chain's last step lands on 0 too
    # the shift itself: sigma' = 3 s / (1 + 2 s) of the evenly spaced grid from 1 to the smallest training sigma
    smallest = 3 * 0.001 / (1 + 2 * 0.001)
    s = torch.linspace(1, smallest, 10, dtype=torch.float64)
    assert torch.allclose(policy.sampling_timesteps(10), 3 * s / (1 + 2 * s))


def test_flux_grid_is_the_flow_match_grid_shifted_by_the_image_size(pipelines):
    policy = load(pipelines, "flux")
    tokens = (policy.latent_shape[1] // 2) * (policy.latent_shape[2] // 2)
    assert policy.mu == size_shift(tokens, FLUX_SCHEDULER) == 0.5 + (tokens - 256) * 0.65 / 3840
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    for steps in (1, 4, 28):
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=policy.mu)
        grid = policy.sampling_timesteps(steps)
        assert grid.dtype == torch.float64 and torch.allclose(grid.float(), scheduler.sigmas[:-1], atol=1e-6, rtol=0)
    latents = torch.randn(2, 16, 8, 6)
    assert pack(latents).shape == (2, 12, 64) and torch.equal(unpack(pack(latents), 8, 6), latents)
    assert torch.equal(pack(latents)[0, 1, :4], latents[0, 0, 0:2, 2:4].flatten())  # token 1: the second 2 x 2 patch


def test_guidance_embedding_is_lcms():
    w = torch.tensor([0.0, 2.5, 7.5])
    for dim in (32, 33, 256):
        expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert torch.equal(guidance_scale_embedding(w, dim), expected)


# -- loading ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_an_uncached_hub_id_fails_fast_offline(family, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    policy_class, config_class = FAMILIES[family]
    source = config_class().source
    start = time.monotonic()
    expected = f"{source}.*not in the local Hugging Face cache.*huggingface-cli download {source}"
    with pytest.raises(ValueError, match=expected):
        policy_class.from_pretrained()
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="no such directory .*, and .* is not a hub id"):
        policy_class.from_pretrained(str(tmp_path / "no" / "such" / "directory"))


def test_a_nearly_empty_tokenizer_is_refused(pipelines):
    with pytest.raises(ValueError, match=r"has only 76 tokens \(< min_vocab=10000\)"):
        StableDiffusionPolicy.from_pretrained(pipelines / "sd", config=StableDiffusionConfig(resolution=RESOLUTION))


def test_bad_configs_and_mismatched_models_are_refused(pipelines):
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        StableDiffusionConfig(dtype="fp8")
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        StableDiffusion3Config(guidance_scale=0.5)
    with pytest.raises(ValueError, match="lora_target_modules must be module names"):
        LatentConsistencyConfig(lora_target_modules=())
    with pytest.raises(ValueError, match="resolution must be a multiple of 4"):
        load(pipelines, "sd", resolution=18)
    with pytest.raises(ValueError, match="do not fit the UNet2DConditionModel"):
        load(pipelines, "sd", lora_target_modules=("no_such_layer",))
    with pytest.raises(ValueError, match="no time_cond_proj_dim"):
        LatentConsistencyPolicy.from_pretrained(
            pipelines / "sd", config=LatentConsistencyConfig(resolution=RESOLUTION, min_vocab=50)
        )
    with pytest.raises(ValueError, match="has no unet/ component"):
        StableDiffusionPolicy.from_pretrained(
            pipelines / "sd3", config=StableDiffusionConfig(resolution=RESOLUTION, min_vocab=50)
        )
    with pytest.raises(ValueError, match="takes a StableDiffusion3Config"):
        StableDiffusion3Policy.from_pretrained(pipelines / "sd3", config=StableDiffusionConfig())
    policy = load(pipelines, "sd")
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 16, 16\)"):
        policy.encode(torch.rand(1, 3, 8, 8))


def test_decoding_without_gradients_in_chunks_is_decoding_at_once(pipelines):
    policy = load(pipelines, "sd")
    latents = torch.randn(DECODE_BATCH + 1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chunked = policy.decode(latents)
    torch.testing.assert_close(chunked, policy.decode(latents).detach(), atol=1e-5, rtol=1e-5)
