"""Ways of running a suite that must not change its leaderboard: killed at chosen moments and re-run,
spread over parallel local workers, or run as Ray tasks; and the optional experiment loggers."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMALL_SWEEP
from test_harness import smoke_spec

from bench.cli import main
from bench.loggers import ExperimentLoggers
from bench.runner import execute
from bench.store import Store

ROOT = Path(__file__).resolve().parents[1]


def leaderboard(store_path: Path) -> pd.DataFrame:
    """The leaderboard table, less wall-clock seconds: they measure the machine, not the method."""
    return pd.read_csv(store_path.parent / "leaderboard.csv").drop(columns=["wall_s"])


def results(store_path: Path) -> pd.DataFrame:
    with Store(store_path) as store:
        frame = store.results_frame().drop(columns=["wall_s"])
    return frame.sort_values(["run_id", "milestone", "split", "metric"]).reset_index(drop=True)


def assert_same_suite(store_path: Path, reference: Path) -> None:
    with Store(store_path) as store, Store(reference) as ref:
        runs, expected_runs = store.runs_frame(), ref.runs_frame()
        assert sorted(runs["run_id"]) == sorted(expected_runs["run_id"])  # none lost, none duplicated
        assert (runs["status"] == "done").all()
        for run_id in runs["run_id"]:
            assert store.milestones_recorded(run_id) == ref.milestones_recorded(run_id), run_id
    pd.testing.assert_frame_equal(results(store_path), results(reference), check_exact=True)
    pd.testing.assert_frame_equal(leaderboard(store_path), leaderboard(reference), check_exact=True)


@pytest.mark.slow
def test_parallel_local_workers_give_the_same_leaderboard_and_whole_lines(reference_sweep, tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--workers", "2", "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)
    # the workers' lines reach the console through the sweep, each whole and led by its run
    lines = capsys.readouterr().out.splitlines()
    with Store(store) as opened:
        run_ids = set(opened.runs_frame()["run_id"])
    by_run = [line for line in lines if line.split(": ")[0] in run_ids]
    assert {line.split(": ")[0] for line in by_run} == run_ids
    others = [line for line in lines if line not in by_run]
    assert all(line.startswith(("suite ", "The asked-for ", "  ", "wrote ")) for line in others), others
    for line in by_run:  # a milestone's line names one run and one milestone: no other line ran into it
        assert line.count(" of nfe:") == 1 and sum(line.count(run_id) for run_id in run_ids) == 1, line


@pytest.mark.slow
def test_the_ray_backend_gives_the_same_leaderboard(reference_sweep, tmp_path):
    store = tmp_path / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--backend", "ray", "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)


# (kind, N): the N-th event of that kind in one invocation of the sweep kills it (tests/injected_fault.py); each
# invocation resumes from what the killed ones left
FAULTS = [("step", 3), ("write", 2), ("checkpoint", 2), ("evaluate", 2), ("write", 5), ("step", 9), ("checkpoint", 1)]


@pytest.mark.slow
def test_a_cell_of_a_gpu_world_is_placed_on_a_gpu_and_a_cpu_worlds_on_none():
    import ray

    from bench.ray_backend import cell_resources, check_resources

    def placement() -> tuple[list, str]:  # defined here, so that Ray ships it by value to its workers
        import os

        import ray

        return list(ray.get_gpu_ids()), os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # a declared GPU: Ray places by it, CUDA or not
    try:
        probe = ray.remote(placement)
        on_gpu = ray.get(probe.options(**cell_resources("scale")).remote())
        on_cpu = [ray.get(probe.options(**cell_resources(w)).remote()) for w in ("digits", "scale-tiny")]
    finally:
        ray.shutdown()
    assert len(on_gpu[0]) == 1 and on_gpu[1] == str(on_gpu[0][0])
    assert [gpus for gpus, _ in on_cpu] == [[], []]  # no GPU is reserved for a cell that asks for none
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        spec = dataclasses.replace(smoke_spec(), world="scale")
        with pytest.raises(ValueError, match="a cell of world scale needs 1 GPU, and the Ray cluster has 0"):
            check_resources([spec])
        check_resources([smoke_spec()])  # the tiny world's cells need none
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_sweep_killed_at_chosen_moments_resumes_to_the_same_leaderboard(reference_sweep, tmp_path):
    store = tmp_path / "store.sqlite"
    command = [sys.executable, str(ROOT / "tests" / "injected_fault.py"), "run", *SMALL_SWEEP, "--store", str(store)]
    killed = []
    for kind, count in FAULTS:
        env = {**os.environ, "BENCH_FAULT": f"{kind}:{count}"}  # stderr is a pipe: no bars
        sweep = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert sweep.returncode in (0, -signal.SIGKILL), sweep.stderr[-2000:]
        if sweep.returncode == 0:
            break  # the sweep finished before this fault's moment came
        killed.append(kind)
    assert len(killed) == len(FAULTS), killed  # every fault struck: the suite is long enough for all of them
    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f}s"
        time.sleep(0.2)
    return value


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds a process's children in /proc")
def test_killing_a_sweep_ends_its_local_workers(reference_sweep, tmp_path):
    command = [sys.executable, "-m", "bench", "run", *SMALL_SWEEP, "--workers", "2", "--store", str(tmp_path / "s")]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the two workers (and multiprocessing's resource tracker) have started and taken their first cells
        workers = _wait_for(lambda: len(_children(sweep.pid)) >= 3 and _children(sweep.pid), 120, "workers start")
        time.sleep(3)
        sweep.kill()
        sweep.wait()
        _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10, "the workers end")
    finally:
        sweep.kill()


def as_a_shell_starts_it() -> None:
    """In the child before it runs the command: SIGINT at its default disposition and unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds a process's children in /proc")
@pytest.mark.parametrize("after_s", [0, 8])  # while the workers still import, and once they train
def test_ctrl_c_ends_a_sweep_in_one_line_and_the_same_command_finishes_it(reference_sweep, tmp_path, after_s):
    store = tmp_path / "store.sqlite"
    command = [sys.executable, "-m", "bench", "run", *SMALL_SWEEP, "--workers", "2", "--store", str(store)]
    env = {key: value for key, value in os.environ.items() if key != "RLHF_BENCH_DEBUG"}
    # a terminal's Ctrl-C reaches every process of its group: the sweep and its workers. A shell starts the sweep with
    # SIGINT at its default and unblocked, whatever this test process's own state (a signal ignored or blocked here
    # would be inherited, and the sweep would never see the interrupt)
    sweep = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=as_a_shell_starts_it,
    )
    try:
        _wait_for(lambda: len(_children(sweep.pid)) >= 3, 120, "workers start")
        time.sleep(after_s)
        os.killpg(sweep.pid, signal.SIGINT)
        out, err = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, err
    assert "Traceback" not in out + err, err
    # Python's resource tracker, a process of its own, may warn after the sweep's last line of a semaphore the
    # interrupted workers' queue left, depending on where the interrupt lands (seen once in several runs)
    sweep_lines = [line for line in err.strip().splitlines() if "resource_tracker" not in line]
    assert sweep_lines[-1] == (
        "python -m bench run: interrupted (finished runs are kept; the same command resumes the rest)"
    )
    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)


@pytest.mark.slow
def test_two_sweeps_on_one_store_train_each_run_once(reference_sweep, tmp_path):
    store = tmp_path / "store.sqlite"
    command = [sys.executable, "-m", "bench", "run", *SMALL_SWEEP, "--store", str(store), "--progress", "never"]
    sweeps = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [sweep.communicate()[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    trained = [set(re.findall(r"^(\S+): 100% of", out, flags=re.M)) for out in outputs]
    assert trained[0] and trained[1] and not trained[0] & trained[1], trained  # shared out, none trained twice
    with Store(store) as both:
        assert trained[0] | trained[1] == set(both.runs_frame()["run_id"])
    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0  # both finished: nothing left, same results
    assert_same_suite(store, reference_sweep)


def test_experiment_loggers_write_tensorboard_and_offline_wandb_runs(tiny_world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = smoke_spec("ddpo")
    with Store(tmp_path / "store.sqlite") as store:
        status = execute(
            spec,
            tiny_world,
            store,
            tmp_path / "checkpoints",
            log=lambda *_: None,
            loggers=ExperimentLoggers(("tensorboard", "wandb"), tmp_path / "logs"),
        )
    assert status == "done"
    run_dir = tmp_path / "logs" / spec.run_id(tiny_world.model_hash(spec.model))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "eval_unseen/judge_acc" in tags and any(t.startswith("train/") for t in tags)
    assert len(events.Scalars("eval_unseen/judge_acc")) == len(spec.milestones)
    assert list(run_dir.glob("wandb/wandb/offline-run-*/run-*.wandb"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--backend", "ray", "--workers", "2"], "--workers is for the local backend"),
        (["run", "--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["run", "--logger", "mlflow"], "unknown logger 'mlflow'; valid: tensorboard, wandb"),
        (["run", "--workers", "0"], "expected a positive integer"),
    ],
)
def test_bad_sweep_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def dies_evaluating_seed_one(spec, store_path, loggers):
    """run_cell, but the worker running a seed-1 cell dies at its first evaluation (after its run has started), as the
    out-of-memory killer would kill it: in the worker, where the sweep cannot see it coming."""
    import bench.runner
    from bench.cell import run_cell

    if spec.seed == 1:
        bench.runner.evaluate = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    return run_cell(spec, store_path, loggers)


@pytest.mark.slow
def test_a_worker_that_dies_costs_its_own_cell_and_the_sweep_goes_on(tmp_path):
    from bench.sweep import WORKER_DIED, run_locally

    cells = [smoke_spec("ddpo", seed) for seed in (0, 1, 2)]
    store_path = tmp_path / "store.sqlite"
    statuses = run_locally(cells, store_path, (), 2, cell=dies_evaluating_seed_one)
    assert statuses == ["done", "failed", "done"]
    with Store(store_path) as store:
        runs = store.runs_frame().set_index("run_id")
    failed = runs[runs["status"] == "failed"]
    assert len(runs) == 3 and list(failed["reason"]) == [WORKER_DIED] and "-s1-" in failed.index[0]
