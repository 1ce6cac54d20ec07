"""Ways of running a suite that must not change its leaderboard: killed at random moments and re-run,
spread over parallel local workers, or run as Ray tasks; and the optional experiment loggers."""

import os
import random
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
def test_parallel_local_workers_give_the_same_leaderboard(reference_sweep, tmp_path):
    store = tmp_path / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--workers", "2", "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)


@pytest.mark.slow
def test_the_ray_backend_gives_the_same_leaderboard(reference_sweep, tmp_path):
    store = tmp_path / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--backend", "ray", "--store", str(store)]) == 0
    assert_same_suite(store, reference_sweep)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_a_sweep_killed_at_random_moments_resumes_to_the_same_leaderboard(reference_sweep, tmp_path):
    store, writes = tmp_path / "store.sqlite", tmp_path / "writes.log"
    env = {**os.environ, "SLOW_WRITES_LOG": str(writes), "SLOW_WRITES_S": "0.15", "BENCH_PROGRESS": "never"}
    command = [sys.executable, str(ROOT / "tests" / "slow_store_writes.py"), "run", *SMALL_SWEEP, "--store", str(store)]
    rng = random.Random(8)
    kills, kills_in_a_write = 0, 0
    for trial in range(6):
        before = len(_lines(writes))
        # its own session, so that the kill reaches the whole sweep as Ctrl-C would
        sweep = subprocess.Popen(
            command, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        in_a_write = trial % 2 == 1
        target = before + (2 * rng.randint(1, 4) if in_a_write else 1)
        deadline = time.monotonic() + 120
        while sweep.poll() is None and len(_lines(writes)) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        if in_a_write:
            while sweep.poll() is None and _lines(writes)[-1:] != ["open"]:
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.0, 1.0))  # anywhere: training, evaluating, checkpointing, writing
        if sweep.poll() is not None:
            assert sweep.returncode == 0
            break  # the sweep finished before this trial's moment came
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
        kills += 1
        kills_in_a_write += _lines(writes)[-1] == "open"  # killed before that write could commit
    assert kills >= 4 and kills_in_a_write >= 2, (kills, kills_in_a_write)

    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0
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
