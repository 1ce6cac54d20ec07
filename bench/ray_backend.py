"""Sweeps beyond one machine: the cells of a suite as Ray tasks (the optional `ray` extra).

Each task runs `bench.cell.run_cell`, exactly what the local runner runs, so the store, resume and
failure isolation are the same: a task writes its run straight into the suite's SQLite store, a failing
run is recorded as failed and the other tasks go on, and a task whose worker dies is retried by Ray
(its default for system failures), resuming from the run's last checkpoint. On a cluster of several
machines, every node needs the project installed (`make install`) and the store's directory on a
filesystem they all share.

Each cell asks for one CPU. The harness places every network on the CPU today, so cells request no
GPU; a world that trains on GPUs would ask for `num_gpus` here.
"""

from __future__ import annotations

from pathlib import Path

from bench.cell import run_cell
from bench.runner import RunSpec
from models.progress import progress


def run_cells(cells: list[RunSpec], store_path: Path, loggers: tuple[str, ...], address: str | None) -> list[str]:
    """Statuses of `cells`, in order, each run as one Ray task. address: a running cluster's address
    (or "auto"); None starts a Ray instance on this machine for the sweep and stops it afterwards."""
    import ray

    # The dashboard needs packages the project does not install and is not needed to run tasks.
    ray.init(address=address, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=1)(run_cell)
        # An absolute path: a task's working directory is not the driver's.
        pending = [task.remote(spec, Path(store_path).resolve(), loggers) for spec in cells]
        return [ray.get(ref) for ref in progress(pending, desc="cells")]
    finally:
        ray.shutdown()  # stops the instance started here; only disconnects from a running cluster
