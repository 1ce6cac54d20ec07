"""`python -m bench throughput`: images per second, peak memory and model FLOPs utilization of each method's
training step on the real-size architectures, with random weights (nothing to download).

  sd15  Stable Diffusion 1.5: its UNet (860M), VAE and CLIP ViT-L/14 text encoder, at 512 px;
  lcm   the same UNet with LCM's guidance embedding (LCM-Dreamshaper-v7's architecture), at 512 px;
  sd3   SD3-medium: its MMDiT (2B), 16-channel VAE and both CLIP text encoders, at 1024 px; T5-XXL is replaced by
        the zeros diffusers' pipeline uses without it (its 4.7B parameters would only encode prompts), so the joint
        attention still sees all 333 text tokens;
  sd35  SD3.5-medium: its MMDiT-X (2.5B: a second attention in its first 13 blocks, RMS-normed queries and keys) with
        SD3's VAE and encoders (T5 as zeros), at 512 px, where Flow-GRPO fine-tunes it;
  flux  FLUX.1-dev: its transformer (11.9B: 19 double and 38 single blocks, the guidance embedding), 16-channel VAE
        and CLIP text encoder, at 512 px; T5-XXL as zeros (512 tokens).
The reward is the LAION aesthetic predictor's architecture (CLIP ViT-L/14 + MLP head), differentiable, so every
method runs (those that learn from feedback label by it, with random pixels as demonstrations). Each method takes
the nightly suite's config (bench/suites.py) and LoRA in the model's precision (bf16 on a GPU); one step warms up,
then `repeats` steps are timed. Reported per step:
  images/s     images the step sampled and trained on (prompts_per_iter x samples_per_prompt; sft: its batch) /
               wall seconds;
  peak GiB     torch.cuda.max_memory_allocated (CUDA only);
  bwd TFLOP/s  FLOPs inside the step's backward pass(es), counted by torch's FlopCounterMode, over their wall time;
  MFU          that over the GPU's dense bf16 peak, known from its name (PEAK_BF16_TFLOPS). With gradient
               checkpointing the backward also recomputes forwards; those FLOPs are counted too (hardware FLOPs),
               so compare MFU without it (`--no-checkpointing`) where memory allows.
`--size tiny` runs the same code on the toy models of models/tiny_pipelines.py: what the tests run on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.suites import build_suite
from methods import METHODS
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
from rewards.feedback import Feedback
from worlds import model_family

PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
}
"""Dense bf16 tensor-core peaks (NVIDIA data sheets), by a substring of torch.cuda.get_device_name()."""


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# -- the architectures ---------------------------------------------------------------------------------------
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


def build_policy(model: str, size: str, tokenizer, *, checkpointing: bool, device: str | None):
    """The model's policy with random weights, its modules initialised on their device (fast on a GPU; free on the
    meta device); the policy itself is built outside that context, so its schedule stays on the CPU as it loads."""
    # the real size at each config's own resolution (512 px, SD3's 1024 px, SD3.5's 512 px)
    common = dict(
        source="random-weights",
        min_vocab=0,
        gradient_checkpointing=checkpointing,
        device=device,
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


# -- measuring -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def host_reads_of_meta_tensors():
    """Device-to-host reads of meta tensors (which hold no data) give zeros, as a GPU's would give numbers, so a
    training step runs on the meta device: shapes and FLOPs without compute, and every op refusing to mix devices
    as CUDA does (CPU scalars aside), which is how a CPU-only machine finds a CPU tensor meeting a GPU one."""
    saved = {name: getattr(torch.Tensor, name) for name in ("cpu", "to", "item", "tolist", "__float__")}

    def to(t, *args, **kwargs):
        try:
            return saved["to"](t, *args, **kwargs)
        except NotImplementedError:  # "cannot copy out of meta tensor": a move off the meta device
            if not t.is_meta:
                raise
            return saved["to"](torch.zeros(t.shape, dtype=t.dtype), *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cpu = lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype) if t.is_meta else saved["cpu"](t, *a, **k)
    torch.Tensor.item = lambda t: 0.5 if t.is_meta else saved["item"](t)
    torch.Tensor.tolist = lambda t: torch.zeros(t.shape, dtype=t.dtype).tolist() if t.is_meta else saved["tolist"](t)
    torch.Tensor.__float__ = lambda t: 0.5 if t.is_meta else saved["__float__"](t)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@dataclasses.dataclass
class BackwardMeter:
    """Wall time and FLOPs spent inside Tensor.backward while `watching`."""

    seconds: float = 0.0
    flops: int = 0
    count_flops: bool = False
    timed: bool = True

    @contextlib.contextmanager
    def watching(self, device: torch.device):
        original = torch.Tensor.backward

        def timed_backward(tensor, *args, **kwargs):
            if self.timed:
                synchronize(device)
            start = time.perf_counter()
            if self.count_flops:
                with FlopCounterMode(display=False) as counter:
                    original(tensor, *args, **kwargs)
                self.flops += counter.get_total_flops()
            else:
                original(tensor, *args, **kwargs)
            if self.timed:
                synchronize(device)
            self.seconds += time.perf_counter() - start

        torch.Tensor.backward = timed_backward
        try:
            yield self
        finally:
            torch.Tensor.backward = original


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass(frozen=True)
class Measurement:
    model: str
    method: str
    images_per_step: int
    sample_steps: int
    seconds_per_step: float | None
    """None on the meta device, which only counts."""
    peak_gib: float | None
    backward_flops: int
    """FLOPs inside one step's backward pass(es)."""
    backward_seconds: float | None
    """Their wall time in one step."""
    device_peak_tflops: float | None
    failure: str = ""
    """Why the step could not be measured (empty when it was)."""

    @property
    def images_per_second(self) -> float | None:
        return self.images_per_step / self.seconds_per_step if self.seconds_per_step else None

    @property
    def backward_tflops(self) -> float | None:
        """Achieved TFLOP/s of the backward pass."""
        return self.backward_flops / self.backward_seconds / 1e12 if self.backward_seconds else None

    @property
    def mfu(self) -> float | None:
        achieved = self.backward_tflops
        return achieved / self.device_peak_tflops if achieved and self.device_peak_tflops else None


def images_per_step(config) -> int:
    """The images one training step samples and trains on (the pipeline's: its second stage's; sft's: its batch of
    demonstrations)."""
    if hasattr(config, "rl_config"):
        config = config.rl_config()
    if hasattr(config, "prompts_per_iter"):
        return config.prompts_per_iter * config.samples_per_prompt
    return config.batch


def method_config(method: str, size: str, sample_steps: int, checkpointing: bool = True):
    """The nightly suite's config of `method` (its --smoke twin's at --size tiny) with `sample_steps` and
    `checkpointing` (ROCM's own, through the sampling chain); the pipeline's second stage gets the steps through
    its rl_options."""
    config = build_suite("nightly-gpu", smoke=size == "tiny").method_config(method)
    fields = {f.name for f in dataclasses.fields(config)}
    options = {"sample_steps": sample_steps, "gradient_checkpointing": checkpointing}
    config = dataclasses.replace(config, **{k: v for k, v in options.items() if k in fields})
    if hasattr(config, "rl_config"):
        config = dataclasses.replace(
            config, rl_options=",".join(filter(None, [config.rl_options, f"sample_steps={sample_steps}"]))
        )
    return config


def measure(
    model: str,
    method: str,
    *,
    size: str = "real",
    sample_steps: int | None = None,
    repeats: int = 2,
    checkpointing: bool = True,
    device: str | None = None,
    tokenizer=None,
) -> Measurement:
    """One method's training step on one architecture: warm-up, then `repeats` timed steps, then a FLOP count. On
    the meta device (no data, no time) only the FLOPs are counted: a GPU's work, measured on any machine."""
    from bench.meter import Meter, MeteredPolicy, MeteredReward

    meta = device is not None and torch.device(device).type == "meta"
    with host_reads_of_meta_tensors() if meta else contextlib.nullcontext():
        policy = build_policy(
            model, size, tokenizer or prompt_tokenizer(size), checkpointing=checkpointing, device=device
        )
        torch_device = policy.config.torch_device()
        reward = aesthetic_reward(size, torch_device, policy.config.weight_dtype())
        steps = sample_steps or policy.default_steps
        config = method_config(method, size, steps, checkpointing)
        meter = Meter()
        prompts = ["a photo of a cat"] * 8
        if METHODS[method].learns_from_feedback:  # random pixels as demonstrations: only their shape costs time
            demonstrations = (torch.rand(8, *policy.image_shape), prompts)
            signal = Feedback(reward, demonstrations, meter, reward_model="prompt")
        else:
            signal = MeteredReward(reward, meter)
        trainer = METHODS[method](MeteredPolicy(policy, meter), signal, prompts, config, seed=0)
        seconds = backward_seconds = peak = None
        if not meta:
            trainer.step()  # warm-up: kernels chosen, optimizer state allocated
            if torch_device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(torch_device)
            timer = BackwardMeter()
            with timer.watching(torch_device):
                synchronize(torch_device)
                start = time.perf_counter()
                for _ in range(repeats):
                    trainer.step()
                synchronize(torch_device)
            seconds, backward_seconds = (time.perf_counter() - start) / repeats, timer.seconds / repeats
            if torch_device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(torch_device) / 2**30
        counter = BackwardMeter(count_flops=True, timed=not meta)
        with counter.watching(torch_device):
            trainer.step()
    return Measurement(
        model,
        method,
        images_per_step(config),
        steps,
        seconds,
        peak,
        counter.flops,
        backward_seconds,
        peak_tflops(torch_device),
    )


def training_methods(model: str) -> list[str]:
    return [name for name, m in METHODS.items() if m.trains and model_family(model) in m.families]


def run(
    models: list[str],
    methods: list[str] | None,
    *,
    size: str,
    sample_steps: int | None,
    repeats: int,
    checkpointing: bool,
    device: str | None,
    log=print,
) -> list[Measurement]:
    results, tokenizer = [], prompt_tokenizer(size)
    for model in models:
        for method in methods or training_methods(model):
            if method not in training_methods(model):
                log(f"{method} does not train {model}: skipped")
                continue
            try:
                results.append(
                    measure(
                        model,
                        method,
                        size=size,
                        sample_steps=sample_steps,
                        repeats=repeats,
                        checkpointing=checkpointing,
                        device=device,
                        tokenizer=tokenizer,
                    )
                )
            except Exception as error:  # out of memory, say: the row says so and the table goes on
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
                results.append(Measurement(model, method, 0, sample_steps or 0, None, None, 0, None, None, reason))
            log(table([results[-1]], header=False))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results


def table(results: list[Measurement], header: bool = True) -> str:
    def number(value, digits=2, unit=""):
        return "n/a" if value is None else f"{value:.{digits}f}{unit}"

    lines = (
        [
            "| model | method | images/step | sampler steps | s/step | images/s | peak GiB | bwd TFLOP/step | "
            "bwd TFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        if header
        else []
    )
    for r in results:
        if r.failure:
            lines.append(f"| {r.model} | {r.method} | failed: {r.failure} |")
            continue
        lines.append(
            f"| {r.model} | {r.method} | {r.images_per_step} | {r.sample_steps} | "
            f"{number(r.seconds_per_step, 3)} | {number(r.images_per_second)} | {number(r.peak_gib, 1)} | "
            f"{number(r.backward_flops / 1e12, 3)} | {number(r.backward_tflops, 1)} | "
            f"{number(r.mfu and 100 * r.mfu, 1, '%')} |"
        )
    return "\n".join(lines)
