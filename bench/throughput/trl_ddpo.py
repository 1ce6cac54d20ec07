"""trl's DDPOTrainer timed on a pipeline directory, the other side of `bench cpu-throughput --trl-python`.

Run by the python of a separate virtualenv that holds trl 0.23.1 (the last release with DDPOTrainer) and its own
diffusers and transformers; it imports neither this project nor anything it does not need, so it runs there as a
plain script: `python bench/throughput/trl_ddpo.py PIPELINE_DIR STEPS` prints one JSON line (`report`): the seconds
of each timed training step after one warm-up step, the FLOPs of a step, and the process's memory (`memory`). The
configuration is the comparison's (bench/throughput/cpu.py: SIDES): its sampler, guidance, batch and LoRA, on one
torch thread, float32.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# the comparison's configuration, as bench/throughput/cpu.py states it for both sides
SAMPLES, STEPS, GUIDANCE, LEARNING_RATE = 16, 10, 5.0, 3e-4
PROMPTS = ("a red cube", "two blue spheres", "the letter k", "a green ring")


def resident_mb() -> float:
    """The process's resident memory now, MB (Linux's /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_resident_mb() -> float:
    """The process's peak resident memory, MB: its address space's high-water mark (VmHWM). Not getrusage's
    ru_maxrss, which carries over the mark of the process it was forked from (a parent's memory, not this one's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line")


def memory(loaded_mb: float) -> dict[str, float]:
    """What both sides report of their memory: the resident MB once the trainer is built (`loaded_mb`, before any
    step), the process's peak resident MB (its high-water mark, every step included), and the steps' part of it."""
    peak = peak_resident_mb()
    return {"loaded_mb": loaded_mb, "peak_mb": peak, "steps_mb": peak - loaded_mb}


def main(pipeline_dir: str, timed_steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    from accelerate import PartialState
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # pyright: ignore[reportMissingImports]

    PartialState()  # the pipeline logs through accelerate before the trainer has made its Accelerator

    counter = iter(range(10**9))

    def prompt_fn():
        return PROMPTS[next(counter) % len(PROMPTS)], {}

    def reward_fn(images, prompts, metadata):
        return images.float().mean(dim=(1, 2, 3)), {}  # the same cheap reward as ours: mean brightness

    with tempfile.TemporaryDirectory() as project_dir:
        config = DDPOConfig(
            num_epochs=timed_steps + 1,
            sample_num_steps=STEPS,
            sample_eta=1.0,
            sample_guidance_scale=GUIDANCE,
            sample_batch_size=SAMPLES,
            sample_num_batches_per_epoch=1,
            train_batch_size=SAMPLES,
            train_gradient_accumulation_steps=1,
            train_num_inner_epochs=1,
            train_timestep_fraction=1.0,
            train_cfg=True,
            train_learning_rate=LEARNING_RATE,
            train_use_8bit_adam=False,
            per_prompt_stat_tracking=False,
            mixed_precision="no",
            log_with=None,
            project_kwargs={"project_dir": project_dir},
            save_freq=10**9,
            async_reward_computation=False,
        )
        pipeline = DefaultDDPOStableDiffusionPipeline(pipeline_dir, use_lora=True)
        pipeline.sd_pipeline.set_progress_bar_config(disable=True)
        trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
        loaded = resident_mb()
        seconds = []
        for epoch in range(timed_steps + 1):
            start = time.perf_counter()
            trainer.step(epoch, epoch)
            seconds.append(time.perf_counter() - start)
        held = memory(loaded)  # before the counted step, whose math attention holds more
        flops = count_flops(lambda: trainer.step(timed_steps + 1, timed_steps + 1))
    print(json.dumps(report(seconds[1:], flops, held)))


def count_flops(step: Callable[[], object]) -> int:
    """The FLOPs of one call of `step` (torch's FlopCounterMode, backward included), attention run by its math
    backend: the counter has no formula for the CPU's fused attention kernel, whose products would count as none
    (diffusers' UNet calls it, and the scenes world's network). Here, where this script finds it without importing
    the project, and the one count bench/throughput/cpu.py makes too."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted:
        step()
    return counted.get_total_flops()


def report(seconds: list[float], flops: int, held: dict[str, float]) -> dict:
    """The JSON line both sides print: each timed step's seconds, the samples a step trains, the FLOPs of one step
    (count_flops over a step after the timed ones: every step does the same arithmetic) and the memory of the
    warm-up and timed steps (`memory`)."""
    return {"seconds": seconds, "samples": SAMPLES, "flops": flops, "memory": held}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
