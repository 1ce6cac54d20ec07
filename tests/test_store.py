import multiprocessing
import shutil
import sqlite3

import numpy as np
import pytest

from bench.store import SCHEMA_VERSION, RunRecord, Store

USED = {"nfe": 1000.0, "reward_queries": 64.0, "samples": 64.0, "labels": 0.0, "wall_s": 1.5}


def make_run(run_id="r0", method="ddpo", reward="digit", seed=0, config_hash="c0") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        suite="tiny",
        method=method,
        method_version="1",
        variant="",
        model="diffusion",
        world="digits",
        reward=reward,
        seed=seed,
        budget_unit="nfe",
        budget=2000.0,
        config_json='{"lr": 0.001}',
        config_hash=config_hash,
        git_sha="abc123",
        base_model_hash="h0",
    )


def images(n=5, c=1, value_seed=0):
    return np.random.default_rng(value_seed).integers(0, 256, size=(n, c, 8, 8), dtype=np.uint8)


def record(store, run_id, milestone, value, sample_seed=0):
    store.record_milestone(
        run_id,
        milestone,
        budget=1000.0 * (milestone + 1),
        used=USED,
        metrics=[("eval_unseen", "judge_acc", value, True), ("eval_unseen", "fid", 10.0 - value, False)],
        samples={"eval_unseen": ([f"p{i}" for i in range(5)], images(value_seed=sample_seed))},
    )


def test_round_trip(tmp_path):
    run = make_run()
    with Store(tmp_path / "s" / "store.sqlite") as store:
        assert store.run_status("r0") is None
        store.start_run(run)
        assert store.run_status("r0") == "running"
        rgb = images(n=3, c=3, value_seed=7)
        store.record_milestone(
            "r0",
            0,
            budget=1000.0,
            used=USED,
            metrics=[("eval_unseen", "judge_acc", 0.75, True), ("eval_seen", "fid", 12.5, False)],
            samples={"eval_unseen": (["a", "b", "c"], rgb)},
        )
        store.finish_run("r0", "done")

        runs = store.runs_frame()
        assert len(runs) == 1
        for field, value in vars(run).items():
            assert runs.loc[0, field] == value, field
        assert runs.loc[0, "status"] == "done" and runs.loc[0, "finished"]

        results = store.results_frame().set_index(["split", "metric"])
        assert len(results) == 2
        assert results.loc[("eval_unseen", "judge_acc"), "value"] == 0.75
        assert results.loc[("eval_seen", "fid"), "higher_is_better"] is np.False_
        assert results.loc[("eval_unseen", "judge_acc"), "higher_is_better"] is np.True_
        row = results.loc[("eval_unseen", "judge_acc")]
        assert row["schema_version"] == SCHEMA_VERSION and row["nfe"] == 1000.0 and row["wall_s"] == 1.5
        assert row["budget"] == 1000.0 and row["milestone"] == 0 and row["seed"] == 0

        prompts, back = store.samples("r0", 0, "eval_unseen")
        assert prompts == ["a", "b", "c"]
        assert back.dtype == np.uint8 and back.shape == rgb.shape and np.array_equal(back, rgb)
        with pytest.raises(ValueError, match="eval_unseen"):
            store.samples("r0", 0, "train")


def test_only_done_runs_reach_results(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        for i, status in enumerate(["done", "failed", None]):
            store.start_run(make_run(f"r{i}", seed=i))
            record(store, f"r{i}", 0, 0.5)
            if status:
                store.finish_run(f"r{i}", status, reason="boom" if status == "failed" else None)
        store.record_not_applicable(make_run("na", method="draft", reward="compress"), "needs a differentiable reward")
        assert set(store.results_frame()["run_id"]) == {"r0"}
        runs = store.runs_frame().set_index("run_id")
        assert runs.loc["r1", "reason"] == "boom"
        assert runs.loc["r2", "status"] == "running"
        assert runs.loc["na", "status"] == "n/a" and runs.loc["na", "reason"] == "needs a differentiable reward"
        assert store.run_status("na") == "n/a"


def test_rerecording_a_milestone_replaces_it(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        store.start_run(make_run())
        record(store, "r0", 0, 0.1, sample_seed=1)
        record(store, "r0", 0, 0.9, sample_seed=2)
        # a redo may evaluate fewer metrics: the old ones must not linger
        store.record_milestone(
            "r0",
            1,
            budget=2000.0,
            used=USED,
            metrics=[("eval_unseen", "judge_acc", 0.3, True), ("eval_unseen", "fid", 1.0, False)],
            samples={},
        )
        store.record_milestone(
            "r0", 1, budget=2000.0, used=USED, metrics=[("eval_unseen", "judge_acc", 0.4, True)], samples={}
        )
        store.finish_run("r0", "done")
        results = store.results_frame()
        assert len(results) == 3
        assert results.loc[results["milestone"] == 0].set_index("metric")["value"].to_dict() == {
            "fid": pytest.approx(9.1),
            "judge_acc": 0.9,
        }
        assert results.loc[results["milestone"] == 1, "value"].tolist() == [0.4]
        assert np.array_equal(store.samples("r0", 0, "eval_unseen")[1], images(value_seed=2))
        with pytest.raises(ValueError, match="no samples"):
            store.samples("r0", 1, "eval_unseen")
        assert store.milestones_recorded("r0") == {0, 1}


def test_start_run_resumes_an_existing_run(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        store.start_run(make_run())
        record(store, "r0", 0, 0.5)
        record(store, "r0", 1, 0.6)
        store.finish_run("r0", "failed", reason="preempted")
        store.start_run(make_run())
        assert store.run_status("r0") == "running"
        assert store.milestones_recorded("r0") == {0, 1}
        runs = store.runs_frame()
        assert len(runs) == 1 and runs.loc[0, "reason"] is None
        with pytest.raises(ValueError, match="config hash"):
            store.start_run(make_run(config_hash="other"))


def test_bad_input_raises_value_error(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        store.start_run(make_run())
        with pytest.raises(ValueError, match="done, failed, n/a"):
            store.finish_run("r0", "finished")
        with pytest.raises(ValueError, match="unknown run"):
            store.finish_run("nope", "done")
        with pytest.raises(ValueError, match="unknown run"):
            record(store, "nope", 0, 0.5)
        with pytest.raises(ValueError, match="keys"):
            store.record_milestone("r0", 0, 1.0, {"nfe": 1.0}, [], {})
        with pytest.raises(ValueError, match="finite"):
            store.record_milestone("r0", 0, 1.0, USED, [("eval_unseen", "fid", float("nan"), False)], {})
        with pytest.raises(ValueError, match="uint8"):
            store.record_milestone("r0", 0, 1.0, USED, [], {"eval_unseen": (["a"], np.zeros((1, 1, 8, 8)))})
        with pytest.raises(ValueError, match="prompts"):
            store.record_milestone("r0", 0, 1.0, USED, [], {"eval_unseen": (["a"], images(n=2))})
        assert store.milestones_recorded("r0") == set()


def test_refuses_another_schema_version(tmp_path):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ValueError, match="schema version"):
        Store(path)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="not a SQLite results store"):
        Store(tmp_path / "junk.sqlite")


def _worker(path, worker, n_runs):
    with Store(path) as store:
        for i in range(n_runs):
            run_id = f"w{worker}-{i}"
            store.start_run(make_run(run_id, seed=i))
            record(store, run_id, 0, i / n_runs)
            store.finish_run(run_id, "done")


def test_concurrent_workers_lose_nothing(tmp_path):
    path = tmp_path / "store.sqlite"
    n_runs = 30  # 3 write transactions each: ~90 writes per worker, interleaved
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(path, w, n_runs)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    with Store(path) as store:
        runs = store.runs_frame()
        assert len(runs) == 2 * n_runs and (runs["status"] == "done").all()
        assert len(store.results_frame()) == 2 * n_runs * 2


def test_close_leaves_a_complete_single_file(tmp_path):
    path = tmp_path / "store.sqlite"
    store = Store(path)
    for i in range(5):
        store.start_run(make_run(f"r{i}", seed=i))
        record(store, f"r{i}", 0, 0.5, sample_seed=i)
        store.finish_run(f"r{i}", "done")
    store.close()
    store.close()  # idempotent
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0

    alone = tmp_path / "copy" / "store.sqlite"
    alone.parent.mkdir()
    shutil.copy(path, alone)  # what a git checkout gets: the main file only
    with Store(alone) as store:
        assert len(store.runs_frame()) == 5
        assert len(store.results_frame()) == 10
        assert np.array_equal(store.samples("r4", 0, "eval_unseen")[1], images(value_seed=4))
