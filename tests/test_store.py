import math
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import bench.store
from bench.owners import HOST, owner_id
from bench.store import LEASE_STALE_S, Store
from bench.store_schema import SCHEMA_VERSION, RunRecord

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


class FoldFails:
    """A store connection whose folding of the write-ahead log fails, as it does on a full disk."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, *args):
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_close_that_cannot_fold_the_log_loses_nothing(tmp_path, capsys):
    path = tmp_path / "store.sqlite"
    store = Store(path)
    store.start_run(make_run())
    record(store, "r0", 0, 0.5)
    store.finish_run("r0", "done")
    reader = sqlite3.connect(path)  # another connection open: closing the store's is not the last close
    reader.execute("SELECT count(*) FROM runs").fetchone()
    store._conn = FoldFails(store._conn)
    store.close()  # does not raise
    assert "could not be folded" in capsys.readouterr().err
    wal = path.with_name("store.sqlite-wal")
    assert wal.stat().st_size > 0
    copy = tmp_path / "copy"  # the files as a crash right now would leave them
    copy.mkdir()
    shutil.copy(path, copy / "store.sqlite")
    shutil.copy(wal, copy / "store.sqlite-wal")
    reader.close()
    with Store(copy / "store.sqlite", read_only=False) as reopened:
        assert reopened.run_status("r0") == "done"
        assert reopened.results_frame()["value"].tolist() == [10.0 - 0.5, 0.5]


@pytest.mark.parametrize("page", [3, -2])  # a table's root page, and one deep in the recorded milestones
def test_a_corrupt_store_is_refused_at_open_naming_it(tmp_path, page):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        for i in range(40):
            store.start_run(make_run(f"r{i}", seed=i))
            record(store, f"r{i}", 0, 0.5, sample_seed=i)
    data = bytearray(path.read_bytes())
    size = 4096
    page %= len(data) // size
    data[page * size : (page + 1) * size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    for read_only in (False, True):
        with pytest.raises(ValueError, match=f"{path} is corrupt \\(SQLite integrity check: ") as refused:
            Store(path, read_only=read_only)
        assert "\n" not in str(refused.value)  # one line


def test_reading_a_store_writes_nothing_to_it(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        store.start_run(make_run())
    before = path.read_bytes()
    with Store(path, read_only=True) as store:
        assert store.runs_frame()["run_id"].tolist() == ["r0"]
        with pytest.raises(ValueError, match="opened read-only"):
            store.finish_run("r0", "done")
    assert path.read_bytes() == before
    # nor beside it: a reader of a store no writer has open leaves no log or shared memory behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite"]


def _as_another_user_in_a_read_only_folder(action) -> str:
    """`action(store path)`'s outcome (the message of its ValueError, or 'ok') in a forked child that cannot write the
    store's folder: its permissions say so, and a root child gives up root first (root ignores permissions)."""
    folder = Path(tempfile.mkdtemp())  # a folder the child can reach, as pytest's private ones are not
    try:
        with Store(folder / "store.sqlite") as store:
            store.start_run(make_run())
            store.finish_run("r0", "done")
        (folder / "store.sqlite").chmod(0o444)
        folder.chmod(0o555)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            outcome = "ok"
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                action(folder / "store.sqlite")
            except ValueError as error:
                outcome = str(error)
            except BaseException as error:  # noqa: BLE001 - anything else is reported as such
                outcome = f"unexpected {type(error).__name__}: {error}"
            os.write(write, outcome.encode())
            os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        with os.fdopen(read) as pipe:
            return pipe.read()
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_a_store_in_a_read_only_folder_can_be_read_and_its_tables_written_elsewhere(tmp_path):
    from bench.cli import main

    with Store(tmp_path / "store.sqlite") as store:  # the same leaderboard once as ourselves: the child, which
        store.start_run(make_run())  # may not be able to read the interpreter's files, finds every module loaded
        store.finish_run("r0", "done")
    assert main(["leaderboard", "--store", str(tmp_path / "store.sqlite"), "--out", str(tmp_path / "warm")]) == 0
    out = Path(tempfile.mkdtemp())
    out.chmod(0o777)

    def read(path):
        with Store(path, read_only=True) as store:
            assert store.runs_frame()["status"].tolist() == ["done"]
        assert main(["leaderboard", "--store", str(path), "--out", str(out)]) == 0
        try:
            main(["leaderboard", "--store", str(path)])  # into the store's own folder, which is read-only
        except SystemExit as exit:
            raise ValueError(f"exit {exit.code}") from None

    try:
        assert _as_another_user_in_a_read_only_folder(read) == "exit 1"
        assert (out / "leaderboard.md").exists()
    finally:
        shutil.rmtree(out)


def test_a_store_that_cannot_be_written_fails_at_once_naming_it():
    def write(path):
        started = time.monotonic()
        try:
            Store(path)
        finally:
            assert time.monotonic() - started < 5, "it waited as if for a lock"

    outcome = _as_another_user_in_a_read_only_folder(write)
    assert outcome.startswith("cannot write the results store ") and "store.sqlite: " in outcome, outcome


def test_a_run_held_by_a_live_owner_is_skipped_and_a_dead_ones_taken_over(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        assert store.start_run(make_run(), owner="elsewhere:1")
        assert store.holder("r0") == "elsewhere:1"
        assert not store.start_run(make_run())  # another sweep is running it
        assert store.run_status("r0") == "running"
        store.heartbeat("r0", "elsewhere:1")
        assert not store.start_run(make_run())
        with store._write() as conn:  # its owner stopped beating
            conn.execute("UPDATE leases SET heartbeat = heartbeat - ?", (LEASE_STALE_S + 1,))
        assert store.holder("r0") is None
        assert store.start_run(make_run())
        assert store.holder("r0") == owner_id()
        assert store.start_run(make_run())  # its own owner resumes it
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        assert store.start_run(make_run("r1"), owner=f"{HOST}:{dead.pid}")
        assert store.holder("r1") is None  # a process of this host that is gone holds nothing, however fresh
        assert store.start_run(make_run("r1"))


def test_a_lease_beats_while_its_run_trains_and_is_given_up_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.store, "HEARTBEAT_S", 0.05)
    with Store(tmp_path / "store.sqlite") as store:
        store.start_run(make_run())
        (first,) = store._conn.execute("SELECT heartbeat FROM leases").fetchone()
        with store.lease("r0"):
            time.sleep(0.5)
            (later,) = store._conn.execute("SELECT heartbeat FROM leases").fetchone()
            assert later > first
        assert store.holder("r0") is None
        assert store._conn.execute("SELECT count(*) FROM leases").fetchone() == (0,)


@pytest.mark.parametrize("change", ["DROP TABLE metrics", "ALTER TABLE runs DROP COLUMN reason"])
def test_a_store_missing_a_table_or_column_is_refused_at_open_in_one_line(tmp_path, change):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        store.start_run(make_run())
    conn = sqlite3.connect(path)
    conn.execute(change)
    conn.commit()
    conn.close()
    what = "no metrics table" if "metrics" in change else "a runs table without reason"
    for read_only in (True, False):
        with pytest.raises(
            ValueError, match=f"{path} has {what}: not a results store of schema {SCHEMA_VERSION}; restore"
        ) as refused:
            Store(path, read_only=read_only)
        assert "\n" not in str(refused.value)


def test_diagnostics_round_trip_a_step_at_a_time_and_go_with_their_milestone(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        store.start_run(make_run())
        first = {"nfe": np.array([10.0, 20.0]), "loss": np.array([0.5, math.nan]), "kl": np.array([1.0, 2.0])}
        store.record_milestone("r0", 0, 20.0, USED, [("eval_unseen", "judge_acc", 0.5, True)], {}, first)
        second = {"nfe": np.array([30.0]), "loss": np.array([0.25])}
        store.record_milestone("r0", 1, 30.0, USED, [("eval_unseen", "judge_acc", 0.6, True)], {}, second)
        assert store.diagnostics_frame().empty  # a run's diagnostics are read once it is done, as its results
        store.finish_run("r0", "done")
        frame = store.diagnostics_frame()
        assert frame["step"].tolist() == [0, 1, 2] and frame["milestone"].tolist() == [0, 0, 1]
        assert frame["nfe"].tolist() == [10.0, 20.0, 30.0] and frame["kl"].tolist()[:2] == [1.0, 2.0]
        assert math.isnan(frame["loss"][1]) and math.isnan(frame["kl"][2])
        # re-recording a milestone replaces its steps with it
        store.record_milestone("r0", 1, 30.0, USED, [], {}, {"nfe": np.array([40.0])})
        assert store.diagnostics_frame()["nfe"].tolist() == [10.0, 20.0, 40.0]
        with pytest.raises(ValueError, match="one value per step"):
            store.record_milestone("r0", 1, 30.0, USED, [], {}, {"nfe": np.array([40.0]), "kl": np.array([1.0, 2.0])})


def test_a_store_of_schema_4_reads_no_diagnostics_and_a_write_adds_their_table(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        store.start_run(make_run())
        record(store, "r0", 0, 0.5)
        store.finish_run("r0", "done")
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE diagnostics; PRAGMA user_version = 4;")
    conn.close()
    with Store(path, read_only=True) as store:
        assert store.diagnostics_frame().empty and len(store.results_frame()) == 2
    with Store(path) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert store.diagnostics_frame().empty and len(store.results_frame()) == 2
