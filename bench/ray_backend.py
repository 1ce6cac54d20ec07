"""Sweeps beyond one machine: the cells of a suite as Ray tasks (the optional `ray` extra).

Each task runs `bench.cell.run_cell`, exactly what the local runner runs, so the store, resume and
failure isolation are the same: a task writes its run straight into the suite's SQLite store, a failing
run is recorded as failed and the other tasks go on, and a task whose worker dies is retried by Ray
(its default for system failures), resuming from the run's last checkpoint. On a cluster of several
machines, every node needs the project installed (`make install`) and the store's directory on a
filesystem they all share.

Each cell asks for one CPU, and for its world's `gpus_per_cell` (one GPU in the scale world, none in the embedded
worlds and the scale world's tiny twin). Ray places tasks by what they ask for: a scale cell that asked for no GPU
could land on a machine without one (and train on its CPU), or share a GPU with other cells, and Ray versions that
hide the GPUs from such a task make it train on the CPU wherever it lands. A sweep whose cells ask for more GPUs than
the cluster has is refused before any task starts (Ray would hold them forever).
"""

from __future__ import annotations

from pathlib import Path

from bench.cell import run_cell
from bench.runner import RunSpec
from models.progress import progress
from worlds import world_entry


def cell_resources(world: str) -> dict[str, float]:
    """What a cell of `world` asks a Ray cluster for."""
    return {"num_cpus": 1, "num_gpus": world_entry(world).gpus_per_cell}


def check_resources(cells: list[RunSpec]) -> None:
    """Refuses, before any task is submitted, cells that ask for more GPUs than the connected cluster has: Ray would
    hold them forever as infeasible."""
    import ray

    needed = max(cell_resources(spec.world)["num_gpus"] for spec in cells)
    available = ray.cluster_resources().get("GPU", 0.0)
    if needed > available:
        worlds = sorted({spec.world for spec in cells if cell_resources(spec.world)["num_gpus"] > available})
        raise ValueError(
            f"a cell of world {', '.join(worlds)} needs {needed:g} GPU, and the Ray cluster has {available:g}: "
            "connect to a cluster with GPUs (--ray-address), or run it without --backend ray"
        )


def run_cells(cells: list[RunSpec], store_path: Path, loggers: tuple[str, ...], address: str | None) -> list[str]:
    """Statuses of `cells`, in order, each run as one Ray task. address: a running cluster's address
    (or "auto"); None starts a Ray instance on this machine for the sweep and stops it afterwards."""
    import ray

    # The dashboard needs packages the project does not install and is not needed to run tasks.
    ray.init(address=address, include_dashboard=False)
    try:
        check_resources(cells)
        tasks = {}
        for world in {spec.world for spec in cells}:
            resources = cell_resources(world)
            tasks[world] = ray.remote(num_cpus=resources["num_cpus"], num_gpus=resources["num_gpus"])(run_cell)
        # An absolute path: a task's working directory is not the driver's.
        pending = [tasks[spec.world].remote(spec, Path(store_path).resolve(), loggers) for spec in cells]
        return [ray.get(ref) for ref in progress(pending, desc="cells")]
    finally:
        ray.shutdown()  # stops the instance started here; only disconnects from a running cluster
