"""The timing loop of `bench throughput` (what it reports: bench/throughput/__init__.py): each method's training step
on each architecture, warmed up, timed, its backward FLOPs counted, and the table of the results."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from bench.experiments import build_suite
from bench.parallel import ONE_PROCESS, shard_policy
from bench.throughput.architectures import aesthetic_reward, build_policy, prompt_tokenizer
from bench.throughput.counting import BackwardMeter, LiveMemory, host_reads_of_meta_tensors, peak_tflops, synchronize
from methods import METHODS
from models.scale.lora import denoiser_blocks
from rewards.feedback import Feedback
from rewards.learned import PromptRewardModel
from worlds import model_family


@dataclasses.dataclass(frozen=True)
class Measurement:
    model: str
    method: str
    images_per_step: int
    sample_steps: int
    seconds_per_step: float | None
    """None on the meta device, which only counts."""
    peak_gib: float | None
    """The step's peak memory: CUDA's allocator's, or on the meta device its live tensors' (LiveMemory)."""
    backward_flops: int
    """FLOPs inside one step's backward pass(es)."""
    backward_seconds: float | None
    """Their wall time in one step."""
    device_peak_tflops: float | None
    sharded_peak_gib: float | None = None
    """A full fine-tune's peak per GPU sharded with FSDP2 over `shards` GPUs, computed from `peak_gib` (sharded_peak);
    None unsharded."""
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
    finetune: str = "lora",
    shards: int = 1,
) -> Measurement:
    """One method's training step on one architecture (its LoRA adapters, or with `finetune` 'full' every weight of
    its denoiser): warm-up, then `repeats` timed steps, then a FLOP count. On the meta device (no data, no time) the
    FLOPs and the live tensors' peak are counted: a GPU's work and memory, measured on any machine."""
    from bench.meter import Meter
    from bench.trainers import build_trainer

    meta = device is not None and torch.device(device).type == "meta"
    with host_reads_of_meta_tensors() if meta else contextlib.nullcontext():
        policy = build_policy(
            model,
            size,
            tokenizer or prompt_tokenizer(size),
            checkpointing=checkpointing,
            device=device,
            finetune=finetune,
        )
        torch_device = policy.config.torch_device()
        if finetune == "full" and not meta:  # as `bench run --sharding fsdp2` runs it on one GPU (the meta device has
            shard_policy(policy, ONE_PROCESS)  # no process group: its sharded column is computed)
        reward = aesthetic_reward(size, torch_device, policy.config.weight_dtype())
        steps = sample_steps or policy.default_steps
        config = method_config(method, size, steps, checkpointing)
        meter = Meter()
        prompts = ["a photo of a cat"] * 8
        trainer = build_trainer(
            method,
            policy,
            reward,
            prompts,
            config,
            0,
            meter,
            # random pixels as the annotator's demonstrations: only their shape costs time
            lambda meter: Feedback(reward, (torch.rand(8, *policy.image_shape), prompts), meter, PromptRewardModel),
        )
        seconds = backward_seconds = peak = None
        if meta:
            trainer.step()  # the optimizer's moments allocated, as after a GPU's warm-up
        else:
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
        memory = LiveMemory(torch_device)
        with counter.watching(torch_device), memory if meta else contextlib.nullcontext():
            trainer.step()
        if meta:
            peak = memory.peak / 2**30
        sharded = sharded_peak(peak, trainer, shards) if finetune == "full" and shards > 1 and peak else None
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
        sharded,
    )


def sharded_peak(peak_gib: float, trainer, shards: int) -> float:
    """A full fine-tune's peak per GPU with FSDP2 over `shards` GPUs, computed from its unsharded peak: the model
    states (the trained weights and their gradients, the optimizer's moments, the reference's weights) split
    `shards` ways, the rest (the frozen VAE and text encoders, the reward, the activations) as measured, and two of
    the largest block's weights gathered in the compute dtype (FSDP2 gathers the next block's while one computes).
    An upper bound where the peak holds fewer gradients than all of them."""
    policy = trainer.policy

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    trained = policy.trainable_parameters()
    moments = [t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    states = 2 * size(trained) + size(moments) + size(policy.frozen_copy().network.parameters())
    compute_bytes = torch.empty((), dtype=policy.config.weight_dtype()).element_size()
    gathered = 2 * compute_bytes * max(sum(p.numel() for p in b.parameters()) for b in denoiser_blocks(policy.backbone))
    return peak_gib - states * (1 - 1 / shards) / 2**30 + gathered / 2**30


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
    finetune: str = "lora",
    shards: int = 1,
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
                        finetune=finetune,
                        shards=shards,
                    )
                )
            except Exception as error:  # out of memory, say: the row says so and the table goes on
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
                results.append(
                    Measurement(model, method, 0, sample_steps or 0, None, None, 0, None, None, failure=reason)
                )
            log(table([results[-1]], header=False, shards=shards))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results


def table(results: list[Measurement], header: bool = True, shards: int = 1) -> str:
    def number(value, digits=2, unit=""):
        return "n/a" if value is None else f"{value:.{digits}f}{unit}"

    sharded = f" peak GiB per GPU, FSDP2 over {shards} |" if shards > 1 else ""
    lines = (
        [
            f"| model | method | images/step | sampler steps | s/step | images/s | peak GiB |{sharded} "
            "bwd TFLOP/step | bwd TFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|" + "---|" * (shards > 1) + "---|---|---|",
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
            + (f"{number(r.sharded_peak_gib, 1)} | " if shards > 1 else "")
            + f"{number(r.backward_flops / 1e12, 3)} | {number(r.backward_tflops, 1)} | "
            f"{number(r.mfu and 100 * r.mfu, 1, '%')} |"
        )
    return "\n".join(lines)
