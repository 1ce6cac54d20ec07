"""A suite: every method x reward x seed cell run in turn against one store, then the tables.

Cells are independent: a failed cell is recorded and the sweep goes on; re-running the same
command skips finished cells and resumes interrupted ones.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench.report import write_results
from bench.runner import RunSpec, execute
from bench.store import Store
from bench.suites import Suite
from bench.world import ensure_world, load_world


def build_models(world: str) -> None:
    start = time.monotonic()
    directory = ensure_world(world)
    print(f"world {world!r} ready in {directory} ({time.monotonic() - start:.0f}s)")


def specs(suite: Suite) -> list[RunSpec]:
    return [
        RunSpec(suite=suite.name, world=suite.world, method=method, variant=variant, model=model,
                method_config=suite.method_config(method, variant), reward=reward, seed=seed, budget=suite.budget,
                milestones=suite.milestones, eval=suite.eval)
        for reward in suite.rewards for method, variant, model in suite.entries() for seed in suite.seeds
    ]


def write_tables(store_path: Path, out_dir: Path, studies: tuple[str, ...] = ()) -> None:
    with Store(store_path) as store:
        for path in write_results(store, out_dir, studies):
            print(f"wrote {path}")


def work_dir(store_path: Path) -> Path:
    """Where the runs of a store keep their checkpoints (and logs): beside the store and named after it,
    so that a checkpoint can only ever resume a run of the store it was written for."""
    return store_path.parent / f"{store_path.stem}.runs"


def run_suite(suite: Suite, store_path: Path) -> int:
    """Runs every cell; returns 0 if all cells are done or not applicable, 1 if any failed."""
    world = load_world(suite.world)
    checkpoints = work_dir(store_path) / "checkpoints"
    start = time.monotonic()
    with Store(store_path) as store:
        statuses = [execute(spec, world, store, checkpoints) for spec in specs(suite)]
    failed = statuses.count("failed")
    print(f"suite {suite.name!r}: {len(statuses)} runs, {statuses.count('done')} done, "
          f"{statuses.count('n/a')} n/a, {failed} failed ({time.monotonic() - start:.0f}s)")
    write_tables(store_path, store_path.parent, suite.studies)
    print((store_path.parent / "leaderboard.md").read_text())
    return 1 if failed else 0
