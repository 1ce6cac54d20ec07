"""`python -m bench cpu-throughput`: how fast the policy-gradient update runs on one CPU thread, against the machine's
own float32 matmul and against trl's DDPOTrainer.

worlds  the training step of each entry of the embedded worlds' leaderboards (the default suite on digits, the
        scenes suite), as the suite configures it, on the first of its rewards the method trains on (a
        policy-gradient method's also at one trained step per network call, the re-evaluation unbatched): NFE/s,
        and those times the generator's FLOPs per NFE (trl_ddpo.count_flops) as GFLOP/s and as a
        share of the best float32 matmul rate this thread reaches (square matrices of 256 to 2,048). The FLOPs
        are the generator's alone: a reward's network (differentiated through by the direct-gradient methods) and
        the optimizer's arithmetic are work the share does not count;
trl     with --trl-python: DDPO on one tiny Stable Diffusion pipeline (32 px, 16 x 16 x 4 latents, the 985k-parameter
        UNet of models/tiny_pipelines.py), here and in trl 0.23.1's DDPOTrainer, in separate processes that
        alternate (each of ours, then trl; again), each timing `steps` training steps after a warm-up step. Both
        sides: 10 DDIM steps at eta 1, guidance 5 in sampling and in training, 16 samples per step trained in one
        minibatch over every step, one optimizer step, LoRA r = 4 on to_q, to_k, to_v and to_out.0, float32, the
        mean brightness as the reward. Ours runs four ways (OURS): re-evaluating every trained step as trl does,
        at the default steps per network call and at one, and with ddpo.reuse_sampling_pass, where that one
        on-policy minibatch differentiates the sampling pass instead (the same gradient, as its ratio is 1, trl's
        too), every chain at once or a prompt's group at a time. trl lives in its own virtualenv
        (bench/throughput/trl_ddpo.py says which). Memory: each side's peak resident MB over its rounds (a
        process's high-water mark, model and steps), and the steps' part of it (the peak less the resident memory
        once the trainer is built). Arithmetic: each side's FLOPs of one training step (torch's FlopCounterMode over
        a step after the timed ones, the backward included, attention by its math backend: trl_ddpo.count_flops),
        trl's over ours (the speed-up the sides would show at equal FLOP rates: what doing less work buys, apart
        from doing it faster) and each side's FLOP rate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.meter import Meter
from bench.throughput import trl_ddpo
from bench.trainers import build_trainer
from methods import METHODS
from methods.toolkit.policy_gradient import PolicyGradientOptions

CPU_METHODS = tuple(name for name, method in METHODS.items() if method.trains)
"""The methods timed on the embedded worlds: every one that trains."""
EMBEDDED_SUITES = ("default", "scenes")
"""The embedded worlds' leaderboards (digits, scenes), whose entries and configs the world rates time."""
TRL_SCRIPT = Path(trl_ddpo.__file__)
OURS: dict[str, dict[str, object]] = {
    "ours, re-evaluating": {},
    "ours, 1 step a call": {"steps_per_call": 1},
    "ours, reusing": {"reuse_sampling_pass": True},
    "ours, reusing by group": {"reuse_sampling_pass": True, "reuse_groups": 1},
}
"""Our sides of the comparison, each DDPO's options over the comparison's: re-evaluating every trained step as trl
does (at the default steps_per_call, the steps of a call batched), the same a step per network call (what the batching
costs in memory), with ddpo.reuse_sampling_pass, and the same sampled and differentiated a prompt's group of 4 chains
at a time (ddpo.reuse_groups 1: a group's activations held instead of every chain's)."""
TRL = "trl"
SIDES = (*OURS, TRL)
ONE_THREAD = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Each side's environment: offline (everything is on disk), one thread."""


def matmul_rate() -> float:
    """The best float32 matmul FLOP/s of this thread over square sizes 256 to 2,048."""
    best = 0.0
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        _ = a @ b  # warm-up
        repeats = max(3, int(2e10 / n**3))
        start = time.perf_counter()
        for _ in range(repeats):
            _ = a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


@dataclasses.dataclass(frozen=True)
class WorldRate:
    """One leaderboard entry's training step on its world, one thread: its speed, or why it cannot run there."""

    world: str
    method: str
    model: str
    reward: str  # the one it trained on ('' where it has no rate)
    steps_per_call: int | None  # a policy-gradient method's; None for the others
    seconds_per_step: float = 0.0
    nfe_per_second: float = 0.0
    flops_per_nfe: float = 0.0
    reason: str = ""  # why the entry has no rate (every reward of its suite is one it cannot train on)


def flops_per_nfe(policy, prompts: list[str]) -> float:
    """FLOPs of one network evaluation (a forward on one state) of the policy's generator, on four of `prompts`."""
    x = torch.randn(4, *policy.latent_shape)
    t = policy.sampling_timesteps(policy.default_steps)[:1].expand(4)
    with torch.no_grad():
        return trl_ddpo.count_flops(lambda: policy.step_output(x, t, policy._text(prompts[:4]))) / 4


def world_rates(suite_name: str, methods: list[str], steps: int) -> list[WorldRate]:
    """Each entry of the suite (a leaderboard's methods on its world, variants aside) whose method is in `methods`:
    its training step as the suite configures it, on the first of the suite's rewards it trains on, after a warm-up
    step; a policy-gradient method's also at one trained step per network call."""
    from bench.experiments import build_suite
    from bench.reward_spec import reward_class
    from rewards.feedback import Feedback
    from worlds import load_world

    suite = build_suite(suite_name)
    world = load_world(suite.world)
    rates = []
    for method, variant, model in suite.entries():
        if variant or method not in methods:
            continue
        trainable = [r for r in suite.rewards if METHODS[method].incompatibility(reward_class(r), "nfe") is None]
        if not trainable:
            reason = METHODS[method].incompatibility(reward_class(suite.rewards[0]), "nfe") or ""
            rates.append(WorldRate(suite.world, method, model, "", None, reason=reason))
            continue
        config = suite.method_config(method, model=model, reward=trainable[0])
        raw_reward = reward_class(trainable[0]).from_world(world)
        flops = flops_per_nfe(world.make_policy(model), world.prompts["train"])
        batched = issubclass(METHODS[method].Config, PolicyGradientOptions)
        for per_call in (1, config.steps_per_call) if batched else (None,):
            options = config if per_call is None else dataclasses.replace(config, steps_per_call=per_call)
            meter, policy = Meter(), world.make_policy(model)
            trainer = build_trainer(
                method,
                policy,
                raw_reward,
                world.prompts["train"],
                options,
                0,
                meter,
                functools.partial(Feedback.from_world, world, raw_reward, base_policy=policy),
            )
            trainer.step()  # warm-up (and a method's one-off collection of its feedback or dataset)
            nfe, start = meter.usage.nfe, time.perf_counter()
            for _ in range(steps):
                trainer.step()
            seconds = time.perf_counter() - start
            nfe_rate = (meter.usage.nfe - nfe) / seconds
            rate = WorldRate(suite.world, method, model, trainable[0], per_call, seconds / steps, nfe_rate, flops)
            rates.append(rate)
    return rates


def write_sd_pipeline(directory: Path) -> Path:
    """The comparison's Stable Diffusion pipeline (module docstring), saved by diffusers' own save_pretrained."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from models.tiny_pipelines import SD_SCHEDULER, letters_tokenizer, text_config, tiny_unet, tiny_vae

    torch.manual_seed(0)
    vocab = directory / "vocab"
    # diffusers annotates its components narrower than it accepts (None for the safety checker, any scheduler)
    pipeline: Any = StableDiffusionPipeline
    schedule: dict[str, Any] = dict(SD_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipeline(
        vae=tiny_vae(latent_channels=4),
        text_encoder=CLIPTextModel(text_config(32)),
        tokenizer=letters_tokenizer(vocab),
        unet=tiny_unet(sample_size=16),  # 16 x 16 latents: 32 px through the VAE's factor 2
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        scheduler=DDIMScheduler(**schedule),
    ).save_pretrained(directory / "sd")
    # transformers 5 saves the fast tokenizer's file alone; trl's transformers 4 loads the slow one from these
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab / name, directory / "sd" / "tokenizer" / name)
    return directory / "sd"


class Brightness:
    """The comparison's reward on both sides: each image's mean pixel value."""

    version = "brightness"

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


def time_ours(pipeline_dir: str, timed_steps: int, side: str) -> None:
    """One of our sides of the comparison (OURS), in its own process: prints the JSON line trl_ddpo.py prints."""
    from models.scale.config import StableDiffusionConfig
    from models.scale.unet import StableDiffusionPolicy

    torch.manual_seed(0)  # one thread: versus_trl starts this process with ONE_THREAD's environment
    config = StableDiffusionConfig(
        source=pipeline_dir, resolution=32, guidance_scale=trl_ddpo.GUIDANCE, dtype="float32", min_vocab=0, device="cpu"
    )
    policy = StableDiffusionPolicy.from_pretrained(pipeline_dir, config=config)
    groups = len(trl_ddpo.PROMPTS)
    options = METHODS["ddpo"].Config(
        prompts_per_iter=groups,
        samples_per_prompt=trl_ddpo.SAMPLES // groups,
        sample_steps=trl_ddpo.STEPS,
        eta=1.0,
        minibatch=trl_ddpo.SAMPLES,
        learning_rate=trl_ddpo.LEARNING_RATE,
        **OURS[side],
    )
    meter = Meter()
    trainer = build_trainer("ddpo", policy, Brightness(), list(trl_ddpo.PROMPTS), options, 0, meter)
    loaded = trl_ddpo.resident_mb()
    seconds = []
    for _ in range(timed_steps + 1):
        start = time.perf_counter()
        trainer.step()
        seconds.append(time.perf_counter() - start)
    held = trl_ddpo.memory(loaded)  # before the counted step, as trl's side
    print(json.dumps(trl_ddpo.report(seconds[1:], trl_ddpo.count_flops(trainer.step), held)))


@dataclasses.dataclass
class Side:
    """One side's figures over the rounds: samples/s of each timed step, and the memory each round's process
    reported (trl_ddpo.memory)."""

    rates: list[float] = dataclasses.field(default_factory=list)
    memory: list[dict[str, float]] = dataclasses.field(default_factory=list)
    flops: int = 0
    """One training step's FLOPs (the same in every round)."""

    def peak(self, key: str) -> float:
        """The largest of the rounds' `key` (peak_mb or steps_mb)."""
        return max(round_memory[key] for round_memory in self.memory)


def versus_trl(trl_python: str, rounds: int, steps: int) -> dict[str, Side]:
    """Each side's samples/s and memory in each round, the sides alternating in fresh processes."""
    ours = [sys.executable, "-m", "bench.throughput.cpu"]
    with tempfile.TemporaryDirectory() as root:
        pipeline = str(write_sd_pipeline(Path(root)))
        commands = {
            **{side: [*ours, pipeline, str(steps), side] for side in OURS},
            TRL: [trl_python, str(TRL_SCRIPT), pipeline, str(steps)],
        }
        sides = {side: Side() for side in commands}
        for _ in range(rounds):
            for side, command in commands.items():
                done = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD)
                if done.returncode != 0:
                    raise RuntimeError(f"the {side} side failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                sides[side].rates += [result["samples"] / s for s in result["seconds"]]
                sides[side].memory.append(result["memory"])
                sides[side].flops = result["flops"]
    return sides


def report(methods: list[str], steps: int, trl_python: str | None, rounds: int) -> str:
    torch.set_num_threads(1)
    peak = matmul_rate()
    lines = [f"one thread's float32 matmul: {peak / 1e9:.1f} GFLOP/s (best of 256 to 2,048 square)", ""]
    lines.append("the embedded worlds' leaderboard entries, one training step (the suite's config), one thread:")
    lines.append("world   method            model           reward    steps/call  s/step   NFE/s  GFLOP/s  of matmul")
    for r in (rate for suite in EMBEDDED_SUITES for rate in world_rates(suite, methods, steps)):
        per_call = "-" if r.steps_per_call is None else r.steps_per_call
        entry = f"{r.world:<7} {r.method:<17} {r.model:<15} {r.reward or '-':<9} {per_call:>10}"
        if r.reason:
            lines.append(f"{entry}  n/a: {r.reason}")
            continue
        gflops = r.nfe_per_second * r.flops_per_nfe / 1e9
        lines.append(
            f"{entry} {r.seconds_per_step:>7.2f} {r.nfe_per_second:>7,.0f} {gflops:>8.1f} {gflops * 1e9 / peak:>10.0%}"
        )
    if trl_python:
        sides = versus_trl(trl_python, rounds, steps)
        medians = {name: statistics.median(side.rates) for name, side in sides.items()}
        trl = sides[TRL]
        lines += ["", "tiny SD DDPO (32 px, 10 DDIM steps, CFG 5, 16 samples/step), one thread, samples/s:"]
        for name, side in sides.items():
            each = ", ".join(f"{v:.2f}" for v in side.rates)
            lines.append(f"  {name:<22} median {medians[name]:.2f}  ({each})")
        for name in OURS:
            lines.append(f"  {name} / trl: {medians[name] / medians[TRL]:.2f}x")
        lines += [
            "",
            "arithmetic, one training step: GFLOP (FlopCounterMode, backward included), trl's over it (the speed-up "
            "at equal FLOP rates), and the FLOP rate at the median samples/s, against one thread's matmul:",
        ]
        for name, side in sides.items():
            rate = side.flops * medians[name] / trl_ddpo.SAMPLES
            lines.append(
                f"  {name:<22} {side.flops / 1e9:>7.2f}  {trl.flops / side.flops:>5.2f}x  {rate / 1e9:>6.1f} GFLOP/s "
                f"{rate / peak:>4.0%}"
            )
        lines += ["", "memory, the largest over the rounds: peak resident MB (the steps' part of it), against trl's:"]
        for name, side in sides.items():
            against = "" if side is trl else f"  {side.peak('peak_mb') / trl.peak('peak_mb'):.2f}x"
            lines.append(f"  {name:<22} {side.peak('peak_mb'):>7,.0f} ({side.peak('steps_mb'):,.0f}){against}")
    return "\n".join(lines)


if __name__ == "__main__":
    time_ours(sys.argv[1], int(sys.argv[2]), sys.argv[3])
