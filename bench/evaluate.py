"""Evaluation at a budget milestone: fixed prompts, fixed noise, the same for every method and seed.

Each world scores images with its own metrics (`world.score_images`, `world.metrics`; worlds/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from rewards.combined import CombinedReward


@dataclass(frozen=True)
class EvalConfig:
    steps: int | None = None
    """Sampler steps for evaluation images; None: the model's default (20 deterministic DDIM steps for
    diffusion, 4 for consistency)."""
    samples_per_prompt: int = 4
    """Images per evaluation prompt (>= 2, for diversity)."""
    seed: int = 1234
    """Seed of the evaluation noise: identical for every method, seed and milestone."""
    splits: tuple[str, ...] = ("eval_seen", "eval_unseen")
    """Prompt sets evaluated; the last is the primary one."""
    also_steps: tuple[int, ...] = ()
    """Further sampler step counts the primary set is evaluated with, recorded as split `<set>@<steps>`
    (e.g. eval_unseen@40): how a model trained with one discretization fares with others."""

    def identity(self) -> dict:
        """The fields that determine results; an option at its empty default is left out, so that adding
        one keeps the identity (and run ids) of every earlier run."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v != ()}


def evaluate(trainer, world, reward, meter, budget, cfg: EvalConfig):
    """Generates and scores every evaluation set.

    Returns (metric rows [(split, metric, value, higher_is_better)], samples {split: (prompts, uint8 images)},
    generation usage {split: Usage dict}). Generation is charged to the meter's eval account; scoring uses
    the unmetered reward, since it is the harness measuring, not the method querying.
    """
    rows, samples, usage = [], {}, {}
    sets = [(split, index, trainer.sampler_steps(cfg.steps), split) for index, split in enumerate(cfg.splits)]
    primary, primary_index = cfg.splits[-1], len(cfg.splits) - 1
    sets += [(primary, primary_index, steps, f"{primary}@{steps}") for steps in cfg.also_steps]
    for split, index, steps, name in sets:
        prompts = [p for p in world.prompts[split] for _ in range(cfg.samples_per_prompt)]
        # the same noise for a prompt set whatever the step count: only the discretization differs
        generator = torch.Generator().manual_seed(cfg.seed + index)
        before = dict(meter.accounts["eval"].as_dict())
        with meter.charging("eval"), meter.timed():
            images = trainer.generate(prompts, steps, generator, budget).detach().float().cpu()
        usage[name] = {k: v - before[k] for k, v in meter.accounts["eval"].as_dict().items()}
        for metric, value in world.score_images(images, prompts, cfg.samples_per_prompt, reward).items():
            rows.append((name, metric, value, world.metrics[metric]))
        if isinstance(reward, CombinedReward):  # each term beside the sum the world scored
            with torch.no_grad():
                terms = reward.components(images, prompts)
            rows += [(name, f"reward_{term}", float(values.mean()), True) for term, values in terms.items()]
        stored = (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().astype(np.uint8)
        samples[name] = (prompts, stored)
        for metric, value in world.sample_metrics(stored_images(stored), prompts).items():
            rows.append((name, metric, value, world.metrics[metric]))
    return rows, samples, usage


def stored_images(stored: np.ndarray) -> torch.Tensor:
    """Images in [0, 1] from the 8-bit samples a store keeps: what world.sample_metrics reads, in a run's evaluation
    and in a rescore alike."""
    return torch.from_numpy(stored.astype(np.float32) / 255)


def rescore(store, world, log=lambda line: None) -> int:
    """Adds to every finished run of `world` in `store` the sample metrics (world.sample_metrics) its stored samples
    lack, read from them exactly as a new run's evaluation reads its own; returns how many values it added. A world
    reads the same metrics from every set (worlds/base.World.sample_metrics), so once it has read one, a set that holds
    them all is not read again."""
    runs = store.runs_frame()
    added, names = 0, None
    for run_id in runs.loc[(runs["status"] == "done") & (runs["world"] == world.name), "run_id"]:
        for milestone, split, present in store.sample_sets(run_id):
            if names is not None and names <= present:
                continue
            prompts, stored = store.samples(run_id, milestone, split)
            values = world.sample_metrics(stored_images(stored), prompts)
            names = set(values)
            rows = [(split, m, v, world.metrics[m]) for m, v in values.items() if m not in present]
            if rows:
                store.add_metrics(run_id, milestone, rows)
                added += len(rows)
        log(f"{run_id}: rescored")
    return added
