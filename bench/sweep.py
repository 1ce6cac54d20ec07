"""A suite: every method x reward x seed cell run against one store, then the tables.

Cells are independent: a failed cell is recorded and the sweep goes on; re-running the same
command skips finished cells and resumes interrupted ones. Cells run in this process by default,
in parallel local worker processes (`workers`), or as tasks on a Ray cluster (bench.ray_backend);
each run's numbers depend only on its spec, so all three give the same leaderboard.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from bench.cell import run_cell, world_of
from bench.experiments import Suite
from bench.experiments.suite import Study
from bench.parallel import ONE_PROCESS, DataParallel
from bench.report import write_results
from bench.runner import RunSpec
from bench.store import Store
from models.io import replaced_together
from models.progress import progress, relay_to, relayed, say
from worlds import ARTIFACTS, ensure_world, world_entry


def build_models(world: str, ship: bool = False, workers: int = 1) -> None:
    """Builds the world's networks (`workers` side by side) and checks them against the shipped ones (with `ship`,
    ships them), or checks that every checkpoint it reads is in the cache."""
    start = time.monotonic()
    world_entry(world).prepare(world, ARTIFACTS, print, ship, workers)
    print(f"world {world!r} ready ({time.monotonic() - start:.0f}s)")


def specs(suite: Suite) -> list[RunSpec]:
    return [
        RunSpec(
            suite=suite.name,
            world=suite.world,
            method=method,
            variant=variant,
            model=model,
            method_config=suite.method_config(method, variant, model, reward),
            reward=reward,
            seed=seed,
            budget=suite.budget,
            milestones=suite.milestones,
            eval=suite.eval,
            source=suite.sources.get(model, ""),
            sharding=suite.sharding,
            reward_server=suite.reward_servers.get(reward, ""),
        )
        for reward in suite.rewards
        for method, variant, model in suite.entries()
        for seed in suite.seeds
    ]


def start_worker(parent: int, lines) -> None:
    """A local worker's initializer: its output lines go to the sweep's `lines` queue (models.progress), it ends
    with the sweep (`end_with_parent`), and Ctrl-C, which reaches every process of the terminal, ends it at once and
    quietly: the sweep says it was interrupted, once, and the run the worker was on resumes from its checkpoint, as
    after a kill."""
    relay_to(lines)
    end_with_parent(parent)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held since it was started (interrupts_held)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C held back while local workers start (their pool starts them as work is submitted): a worker inherits
    the held signal and takes it only once start_worker has made it a quiet exit, not a traceback from the middle of
    its imports; this process takes it as soon as the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextmanager
def local_workers(workers: int) -> Iterator[ProcessPoolExecutor]:
    """`workers` local processes, their output relayed to this one's, each ending with it (start_worker)."""
    # spawn, not fork: a forked child would inherit this process's torch thread pools and locks.
    context = multiprocessing.get_context("spawn")
    lines = context.Queue()
    with (
        relayed(lines),
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=start_worker, initargs=(os.getpid(), lines)
        ) as pool,
    ):
        yield pool


def end_with_parent(parent: int) -> None:
    """The worker ends within a second of the sweep that started it, however that sweep ended (killed, it cannot tell
    its workers). The run it was on keeps its checkpoint, and its lease, whose owner is now dead, is taken over by the
    next sweep at once."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="end with parent", daemon=True).start()


def results_dir(store_path: Path) -> Path:
    """Where a store's tables and report go by default: the store's folder when the store is its folder's one
    `store.sqlite` (results/<suite>/), else a folder beside it named after it (`mine.sqlite`: `mine/`; any other
    name, whole: `mine`: `mine-results/`, `mine.db`: `mine.db-results/`), so two stores never share one."""
    if store_path.name == "store.sqlite":
        return store_path.parent
    if store_path.suffix == ".sqlite":
        return store_path.with_suffix("")
    return store_path.with_name(f"{store_path.name}-results")


def write_tables(store_path: Path, out_dir: Path, studies: tuple[Study, ...] = (), asked: tuple[str, ...] = ()) -> None:
    """Every table, plot and the report of a store, into out_dir, replacing the earlier ones all together."""
    with Store(store_path, read_only=True) as store, replaced_together(out_dir) as staging:
        written, answer = write_results(store, staging, studies, asked=asked)
    for line in answer:
        say(line)
    say(f"wrote {len(written)} files into {out_dir}; read {out_dir / 'report.html'} or {out_dir / 'leaderboard.md'}")


WORKER_DIED = "its worker process died (killed: out of memory?) every time it ran it"


def run_locally(
    cells: list[RunSpec], store_path: Path, loggers: tuple[str, ...], workers: int, cell: Callable = run_cell
) -> list[str]:
    """Each cell's status, `cell` (run_cell) run in `workers` local processes. A worker that dies (the out-of-memory
    killer, a kill) breaks the pool, and with it every cell not yet finished: those run again side by side, and a cell
    caught in a second break runs alone, so that the cell whose worker dies alone is recorded failed (WORKER_DIED) and
    the others resume from their checkpoints; the sweep goes on."""
    statuses: dict[int, str] = {}
    breaks = dict.fromkeys(range(len(cells)), 0)
    bar = progress(total=len(cells), desc="cells")
    while len(statuses) < len(cells):
        suspects = [i for i, count in breaks.items() if count >= 2 and i not in statuses]
        batch = suspects[:1] or [i for i in breaks if i not in statuses]
        with local_workers(1 if suspects else workers) as pool:
            with interrupts_held():
                futures = {pool.submit(cell, cells[i], store_path, loggers): i for i in batch}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    statuses[index] = future.result()
                    bar.update()
                except BrokenProcessPool:
                    breaks[index] += 1
        if suspects and suspects[0] not in statuses:  # it broke the pool alone: its worker is the one that died
            statuses[suspects[0]] = record_worker_death(cells[suspects[0]], store_path)
            bar.update()
    bar.close()
    return [statuses[i] for i in range(len(cells))]


def record_worker_death(spec: RunSpec, store_path: Path) -> str:
    """Records the run of `spec` failed because its worker died (where it had started), and says so."""
    world = world_of(spec.world)
    run_id = spec.run_id(world.model_hash(spec.model, spec.source))
    with Store(store_path) as store:
        if store.run_status(run_id) is not None:
            store.finish_run(run_id, "failed", WORKER_DIED)
    say(f"{run_id}: FAILED: {WORKER_DIED}")
    return "failed"


def plan(cells: list[RunSpec], store_path: Path, workers: int) -> str:
    """What a sweep is about to do, said before it starts: how many of its runs the store has already (done or n/a:
    reused), how many it computes, and about how long those take, from the store's own finished runs of the same
    method, variant, model and reward (where it has none, of the same method and model)."""
    if not store_path.exists():
        return f"{len(cells)} runs to compute (a new store: no time estimate yet)"
    world = world_of(cells[0].world)
    try:
        hashes = {(spec.model, spec.source): world.model_hash(spec.model, spec.source) for spec in cells}
    except ValueError:  # a checkpoint missing from the cache: its runs fail with the reason, one by one
        return f"{len(cells)} runs (some base models cannot be read: no plan)"
    with Store(store_path, read_only=True) as store:
        runs = store.runs_frame()
    status = dict(zip(runs["run_id"], runs["status"]))
    done = runs[runs["status"] == "done"]
    seconds = (pd.to_datetime(done["finished"]) - pd.to_datetime(done["started"])).dt.total_seconds()
    by_cell = seconds.groupby([done["method"], done["variant"], done["model"], done["reward"]]).median()
    by_model = seconds.groupby([done["method"], done["model"]]).median()
    to_compute = [s for s in cells if status.get(s.run_id(hashes[(s.model, s.source)])) not in ("done", "n/a")]
    estimates = [
        by_cell.get((s.method, s.variant, s.model, s.reward), by_model.get((s.method, s.model))) for s in to_compute
    ]
    known = [e for e in estimates if e is not None and not math.isnan(e)]
    line = f"{len(cells)} runs: {len(cells) - len(to_compute)} reused from the store, {len(to_compute)} to compute"
    if not to_compute:
        return line
    if not known:
        return line + " (no time estimate: the store has no finished runs of these methods)"
    minutes = sum(known) * len(to_compute) / len(known) / max(workers, 1) / 60
    unknown = f"; {len(to_compute) - len(known)} of them by the others' mean" if len(known) < len(to_compute) else ""
    return (
        line + f" (about {minutes:.0f} min with {max(workers, 1)} worker(s), from the store's finished runs{unknown})"
    )


def run_suite(
    suite: Suite,
    store_path: Path,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    loggers: tuple[str, ...] = (),
    parallel: DataParallel = ONE_PROCESS,
    out_dir: Path | None = None,
    asked: tuple[str, ...] = (),
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
    if parallel.main:
        say(f"suite {suite.name!r}: " + plan(cells, store_path, workers))
    start = time.monotonic()
    if use_ray:
        from bench.ray_backend import run_cells

        statuses = run_cells(cells, store_path, loggers, ray_address)
    elif workers > 1:
        statuses = run_locally(cells, store_path, loggers, workers)
    else:
        statuses = [run_cell(spec, store_path, loggers, parallel) for spec in progress(cells, desc="cells")]
    failed = statuses.count("failed")
    if not parallel.main:
        return 1 if failed else 0
    say(
        f"suite {suite.name!r}: {len(statuses)} runs, {statuses.count('done')} done, "
        f"{statuses.count('n/a')} n/a, {failed} failed"
        + (f", {statuses.count('reused')} reused from the store" if "reused" in statuses else "")
        + (f", {statuses.count('held')} held by another sweep on the store" if "held" in statuses else "")
        + f" ({time.monotonic() - start:.0f}s)"
    )
    out_dir = out_dir or results_dir(store_path)
    write_tables(store_path, out_dir, suite.studies, asked)
    return 1 if failed else 0
