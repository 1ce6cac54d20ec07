"""One cell of a suite, in whatever process runs it: this one, a local worker, a Ray task (bench/ray_backend.py), or
each process of a data-parallel launch. bench/sweep.py and bench/ray_backend.py both run this, and neither imports
the other."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.loggers import ExperimentLoggers
from bench.parallel import ONE_PROCESS, DataParallel
from bench.runner import RunSpec, execute
from bench.store import Store
from worlds import load_world


def work_dir(store_path: Path) -> Path:
    """Where the runs of a store keep their checkpoints (and logs): beside the store and named after it (`mine.sqlite`:
    `mine.runs/`; any other name, whole: `mine.db`: `mine.db-runs/`), so that a checkpoint can only ever resume a run
    of the store it was written for."""
    if store_path.suffix == ".sqlite":
        return store_path.parent / f"{store_path.stem}.runs"
    return store_path.parent / f"{store_path.name}-runs"


CELL_THREADS = 1


@functools.cache
def world_of(name: str):
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


def run_cell(
    spec: RunSpec,
    store_path: Path,
    loggers: tuple[str, ...] = (),
    parallel: DataParallel = ONE_PROCESS,
    keep_going: Callable[[str, int], bool] | None = None,
) -> str:
    """One cell, in whatever process runs it (this one, a local worker, a Ray task, or each process of a
    data-parallel launch): opens the store, runs (or resumes, or skips) the run, returns its status. Safe to
    run concurrently with other cells on the same store: the store serializes writes, and each run has its
    own checkpoint. `keep_going`: asked at each milestone whether to go on (bench/runner.py: execute)."""
    runs = work_dir(store_path)
    with Store(store_path) as store, _one_torch_thread():
        return execute(
            spec,
            world_of(spec.world),
            store,
            runs / "checkpoints",
            loggers=ExperimentLoggers(loggers, runs / "logs"),
            parallel=parallel,
            keep_going=keep_going,
        )
