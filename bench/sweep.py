"""A suite: every method x reward x seed cell run against one store, then the tables.

Cells are independent: a failed cell is recorded and the sweep goes on; re-running the same
command skips finished cells and resumes interrupted ones. Cells run in this process by default,
in parallel local worker processes (`workers`), or as tasks on a Ray cluster (bench.ray_backend);
each run's numbers depend only on its spec, so all three give the same leaderboard.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

from bench.cell import run_cell
from bench.parallel import ONE_PROCESS, DataParallel
from bench.report import write_results
from bench.runner import RunSpec
from bench.store import Store
from bench.suites import Suite
from models.progress import progress
from worlds import ARTIFACTS, ensure_world, world_entry


def build_models(world: str) -> None:
    """Builds the world's networks, or checks that every checkpoint it reads is in the cache."""
    start = time.monotonic()
    world_entry(world).prepare(world, ARTIFACTS, print)
    print(f"world {world!r} ready ({time.monotonic() - start:.0f}s)")


def specs(suite: Suite) -> list[RunSpec]:
    return [
        RunSpec(
            suite=suite.name,
            world=suite.world,
            method=method,
            variant=variant,
            model=model,
            method_config=suite.method_config(method, variant),
            reward=reward,
            seed=seed,
            budget=suite.budget,
            milestones=suite.milestones,
            eval=suite.eval,
            source=suite.sources.get(model, ""),
        )
        for reward in suite.rewards
        for method, variant, model in suite.entries()
        for seed in suite.seeds
    ]


def write_tables(store_path: Path, out_dir: Path, studies: tuple[str, ...] = ()) -> None:
    with Store(store_path) as store:
        for path in write_results(store, out_dir, studies):
            print(f"wrote {path}")


def run_suite(
    suite: Suite,
    store_path: Path,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    loggers: tuple[str, ...] = (),
    parallel: DataParallel = ONE_PROCESS,
) -> int:
    """Runs every cell, in this process, in `workers` local processes, or as Ray tasks, or, data-parallel,
    in this process together with the other launched ones; returns 0 if all cells are done or not
    applicable, 1 if any failed. Every way runs the same `run_cell`, so the store, resume and failure
    isolation are the same."""
    if workers > 1 and not world_entry(suite.world).cells_side_by_side:
        # every worker would load its own generator onto the same GPU; several GPUs train one run together instead
        print(
            f"world {suite.world!r}: one run at a time "
            "(for several GPUs: accelerate launch --multi_gpu -m bench run ...)"
        )
        workers = 1
    if parallel.main:
        ensure_world(suite.world)  # built once here, before parallel workers could race to build it
    parallel.barrier()
    cells = specs(suite)
    start = time.monotonic()
    if use_ray:
        from bench.ray_backend import run_cells

        statuses = run_cells(cells, store_path, loggers, ray_address)
    elif workers > 1:
        # spawn, not fork: a forked child would inherit this process's torch thread pools and locks.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = pool.map(run_cell, cells, repeat(store_path), repeat(loggers))
            statuses = list(progress(jobs, total=len(cells), desc="cells"))
    else:
        statuses = [run_cell(spec, store_path, loggers, parallel) for spec in progress(cells, desc="cells")]
    failed = statuses.count("failed")
    if not parallel.main:
        return 1 if failed else 0
    print(
        f"suite {suite.name!r}: {len(statuses)} runs, {statuses.count('done')} done, "
        f"{statuses.count('n/a')} n/a, {failed} failed ({time.monotonic() - start:.0f}s)"
    )
    write_tables(store_path, store_path.parent, suite.studies)
    print((store_path.parent / "leaderboard.md").read_text())
    return 1 if failed else 0
