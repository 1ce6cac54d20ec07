"""A suite: every method x reward x seed cell run against one store, then the tables.

Cells are independent: a failed cell is recorded and the sweep goes on; re-running the same
command skips finished cells and resumes interrupted ones. Cells run in this process by default,
in parallel local worker processes (`workers`), or as tasks on a Ray cluster (bench.ray_backend);
each run's numbers depend only on its spec, so all three give the same leaderboard.
"""
from __future__ import annotations

import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Iterator

import torch

from bench.loggers import ExperimentLoggers
from bench.report import write_results
from bench.runner import RunSpec, execute
from bench.store import Store
from bench.suites import Suite
from bench.world import ensure_world, is_scale_world, load_world
from bench.parallel import DataParallel
from models.progress import progress


def build_models(world: str) -> None:
    """Builds the world's networks, or for a scale world checks that every checkpoint it names is in the cache."""
    start = time.monotonic()
    if is_scale_world(world):
        load_world(world).verify()
        print(f"world {world!r}: every checkpoint present ({time.monotonic() - start:.0f}s)")
        return
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


CELL_THREADS = 1


@functools.cache
def _world(name: str):
    return load_world(name)  # once per process: every cell a worker runs shares it


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # CPU kernels split their reductions by thread, so the thread count changes the last bits of a
    # run's numbers: every cell runs on one thread, in every backend and on every machine, and
    # parallelism comes from running cells side by side (as Ray schedules one CPU per task).
    threads = torch.get_num_threads()
    torch.set_num_threads(CELL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cell(spec: RunSpec, store_path: Path, loggers: tuple[str, ...] = (),
             parallel: DataParallel = DataParallel()) -> str:
    """One cell, in whatever process runs it (this one, a local worker, a Ray task, or each process of a
    data-parallel launch): opens the store, runs (or resumes, or skips) the run, returns its status. Safe to
    run concurrently with other cells on the same store: the store serializes writes, and each run has its
    own checkpoint."""
    runs = work_dir(store_path)
    with Store(store_path) as store, _one_torch_thread():
        return execute(spec, _world(spec.world), store, runs / "checkpoints",
                       loggers=ExperimentLoggers(loggers, runs / "logs"), parallel=parallel)


def run_suite(suite: Suite, store_path: Path, *, workers: int = 1, ray_address: str | None = None,
              use_ray: bool = False, loggers: tuple[str, ...] = (), parallel: DataParallel = DataParallel()) -> int:
    """Runs every cell, in this process, in `workers` local processes, or as Ray tasks, or, data-parallel,
    in this process together with the other launched ones; returns 0 if all cells are done or not
    applicable, 1 if any failed. Every way runs the same `run_cell`, so the store, resume and failure
    isolation are the same."""
    if workers > 1 and is_scale_world(suite.world):
        # every worker would load its own generator onto the same GPU; several GPUs train one run together instead
        print(f"world {suite.world!r}: one run at a time (for several GPUs: accelerate launch --multi_gpu -m bench run ...)")
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
    print(f"suite {suite.name!r}: {len(statuses)} runs, {statuses.count('done')} done, "
          f"{statuses.count('n/a')} n/a, {failed} failed ({time.monotonic() - start:.0f}s)")
    write_tables(store_path, store_path.parent, suite.studies)
    print((store_path.parent / "leaderboard.md").read_text())
    return 1 if failed else 0
