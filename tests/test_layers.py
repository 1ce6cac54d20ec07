"""The committed and local layers of a suite's results (bench/layers.py): sweeps read both and write locally, and only
`publish` writes the committed store, with finished runs of clean code versions."""

import shutil
import sqlite3

import pandas as pd
import pytest

import bench.commands
import bench.runner
from bench.cli import main
from bench.layers import merge_runs, publish, sync
from bench.store import Store


def _runs(path) -> pd.DataFrame:
    with Store(path, read_only=True) as store:
        return store.runs_frame().set_index("run_id").sort_index()


def _results(path) -> pd.DataFrame:
    with Store(path, read_only=True) as store:
        return store.results_frame().sort_values(["run_id", "milestone", "split", "metric"]).reset_index(drop=True)


def _diagnostics(path) -> pd.DataFrame:
    with Store(path, read_only=True) as store:
        return store.diagnostics_frame().sort_values(["run_id", "step"]).reset_index(drop=True)


def _set(path, sql: str, *args) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    Store(path).close()  # folds the write-ahead log into the file, which the tests copy


@pytest.fixture
def committed(reference_sweep, tmp_path):
    """A committed layer: the small suite's store in results/<suite>/, its runs made at a clean code version."""
    folder = tmp_path / "results" / "smoke"
    folder.mkdir(parents=True)
    shutil.copyfile(reference_sweep, folder / "store.sqlite")
    _set(folder / "store.sqlite", "UPDATE runs SET git_sha = 'abc123'")
    return folder


def test_a_sync_brings_every_committed_run_into_the_local_layer_once(committed, tmp_path):
    local = tmp_path / "artifacts" / "results" / "smoke"
    assert sync(committed, local) == len(_runs(committed / "store.sqlite"))
    pd.testing.assert_frame_equal(_runs(local / "store.sqlite"), _runs(committed / "store.sqlite"))
    pd.testing.assert_frame_equal(_results(local / "store.sqlite"), _results(committed / "store.sqlite"))
    pd.testing.assert_frame_equal(_diagnostics(local / "store.sqlite"), _diagnostics(committed / "store.sqlite"))
    assert not _diagnostics(local / "store.sqlite").empty  # the policy-gradient runs' steps came with them
    assert sync(committed, local) == 0  # nothing twice


def test_a_committed_store_of_the_schema_before_diagnostics_syncs_without_them(committed, tmp_path):
    with sqlite3.connect(committed / "store.sqlite") as db:
        db.executescript("DROP TABLE diagnostics; PRAGMA user_version = 4;")
    local = tmp_path / "artifacts" / "results" / "smoke"
    assert sync(committed, local) == len(_runs(committed / "store.sqlite"))
    pd.testing.assert_frame_equal(_results(local / "store.sqlite"), _results(committed / "store.sqlite"))
    assert _diagnostics(local / "store.sqlite").empty


def test_a_finished_local_run_stays_and_an_unfinished_one_gives_way_to_the_committed(committed, tmp_path):
    local = tmp_path / "local.sqlite"
    shutil.copyfile(committed / "store.sqlite", local)
    first, second = _runs(local).index[:2]
    _set(local, "UPDATE runs SET reason = 'mine' WHERE run_id = ?", first)
    _set(local, "UPDATE runs SET status = 'failed' WHERE run_id = ?", second)
    assert merge_runs(committed / "store.sqlite", local) == 1
    runs = _runs(local)
    assert runs.loc[first, "reason"] == "mine" and runs.loc[second, "status"] == "done"
    pd.testing.assert_frame_equal(_results(local), _results(committed / "store.sqlite"))  # its milestones came too


def test_publish_copies_only_runs_finished_at_a_clean_code_version(committed, tmp_path):
    local = tmp_path / "artifacts" / "results" / "smoke"
    local.mkdir(parents=True)
    shutil.copyfile(committed / "store.sqlite", local / "store.sqlite")
    ids = list(_runs(local / "store.sqlite").index)
    _set(local / "store.sqlite", "UPDATE runs SET git_sha = 'abc123-dirty' WHERE run_id = ?", ids[0])
    _set(local / "store.sqlite", "UPDATE runs SET status = 'failed' WHERE run_id = ?", ids[1])
    _set(local / "store.sqlite", "UPDATE runs SET git_sha = 'unknown' WHERE run_id = ?", ids[2])
    target = tmp_path / "published"
    assert publish(local, target) == len(ids) - 3
    assert set(_runs(target / "store.sqlite").index) == set(ids[3:])
    (local / "tuned.json").write_text('{"ddpo@flow/digit": {"options": {"learning_rate": 1e-05}}}')
    (target / "tuned.json").write_text('{"raft@flow/digit": {"options": {"learning_rate": 3e-05}}}')
    publish(local, target)
    assert (target / "tuned.json").read_text().count("learning_rate") == 2  # the local over the committed


def test_a_sweep_reuses_the_committed_runs_and_writes_none_of_its_own_there(committed, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.commands, "ROOT", tmp_path)
    monkeypatch.setattr(bench.commands, "ARTIFACTS", tmp_path / "artifacts")
    before = (committed / "store.sqlite").read_bytes()
    # the small suite's base runs, and one the committed layer lacks (a third seed)
    assert main(["run", "--suite", "smoke", "--method", "base", "--seeds", "3", "--reward", "digit"]) == 0
    assert (committed / "store.sqlite").read_bytes() == before and not list(committed.glob("*.md"))
    local = _runs(tmp_path / "artifacts" / "results" / "smoke" / "store.sqlite")
    assert set(_runs(committed / "store.sqlite").index) < set(local.index)
    assert (tmp_path / "artifacts" / "results" / "smoke" / "leaderboard.md").is_file()
    # publishing is refused from a tree whose code differs from its commit
    monkeypatch.setattr(bench.runner, "git_sha", lambda: "abc123-dirty")
    with pytest.raises(SystemExit) as exit_:
        main(["publish", "--suite", "smoke"])
    assert exit_.value.code == 2 and (committed / "store.sqlite").read_bytes() == before


def test_a_tunes_options_and_studies_come_into_the_local_layer_once_and_go_back_only_if_complete(committed, tmp_path):
    (committed / "tuning").mkdir()
    with sqlite3.connect(committed / "tuning" / "studies.sqlite") as db:  # Optuna's table of studies, in miniature
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        db.execute("INSERT INTO studies VALUES (1, 'smoke:ddpo@flow/digit')")
    (committed / "tuned.json").write_text('{"ddpo@flow/digit": {"options": {"learning_rate": 1e-05}}}\n')
    local = tmp_path / "artifacts" / "results" / "smoke"
    sync(committed, local)
    assert (local / "tuned.json").read_bytes() == (committed / "tuned.json").read_bytes()
    assert (local / "tuning" / "studies.sqlite").read_bytes() == (committed / "tuning" / "studies.sqlite").read_bytes()
    (local / "tuned.json").write_text('{"ddpo@flow/digit": {"options": {"learning_rate": 2e-05}}}\n')
    sync(committed, local)  # what the local layer holds of its own stays
    assert "2e-05" in (local / "tuned.json").read_text()
    with sqlite3.connect(local / "tuning" / "studies.sqlite") as db:  # a local file that lost a committed study
        db.execute("DELETE FROM studies")
    before = (committed / "store.sqlite").read_bytes()
    with pytest.raises(ValueError, match="lacks the committed studies smoke:ddpo@flow/digit"):
        publish(local, committed)
    assert (committed / "store.sqlite").read_bytes() == before  # refused before anything was written
