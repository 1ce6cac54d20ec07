"""Committed results are a read-only reference; what a sweep computes is local until published.

A suite's committed results, `results/<suite>/` (its store, tables, and a tune's trials, studies and tuned.json), are
what the repository vouches for. A sweep or a tune of the suite works on a local layer out of the repository's tree,
`artifacts/results/<suite>/`: before it starts, every run the committed store holds that the local one lacks (or holds
unfinished) is copied in, so a run the repository has is reused, never recomputed, and the tables written beside the
local store show both; everything computed is written there alone. `bench publish` (`make publish SUITE=...`) is the
one way results enter the committed layer: from a tree whose code is its commit's, it copies the local runs that
finished (done or n/a) at a clean code version into the committed store, carries a tune's trials, studies and tuned
options along, and rewrites the committed tables.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from bench.experiments.suite import tuned_file, write_tuned
from bench.store import Store

FINISHED = "status IN ('done', 'n/a')"
PUBLISHABLE = f"{FINISHED} AND git_sha NOT LIKE '%-dirty' AND git_sha != 'unknown'"
CHILDREN = ("milestones", "metrics", "samples", "diagnostics")
"""The tables that hang off a run, copied with it (where the source has them: a store of an older schema lacks the
diagnostics)."""


def merge_runs(source: Path, target: Path, where: str = "1") -> int:
    """Copies into the store `target` (made if absent) every run of the store `source` that satisfies `where` and that
    `target` lacks or holds unfinished, with its milestones, metrics and samples, in one transaction; returns how many.
    A run `target` has finished stays as it is: a run's numbers depend only on its id."""
    if not source.is_file():
        return 0
    Store(target).close()  # the target exists at the current schema (made or migrated)
    Store(source, read_only=True).close()  # the source is a readable store, or this says why not
    conn = sqlite3.connect(target.resolve().as_uri(), uri=True, timeout=60.0, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")  # an unfinished run's rows go with it (ON DELETE CASCADE)
        conn.execute("ATTACH DATABASE ? AS source", (source.resolve().as_uri() + "?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TEMP TABLE incoming AS SELECT run_id FROM source.runs s WHERE "
                f"({where}) AND NOT EXISTS (SELECT 1 FROM main.runs m WHERE m.run_id = s.run_id AND m.{FINISHED})"
            )
            conn.execute("DELETE FROM main.runs WHERE run_id IN (SELECT run_id FROM incoming)")
            held = {row[0] for row in conn.execute("SELECT name FROM source.sqlite_master WHERE type = 'table'")}
            for table in ("runs", *(child for child in CHILDREN if child in held)):
                columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA main.table_info({table})"))
                conn.execute(
                    f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM source.{table} "
                    "WHERE run_id IN (SELECT run_id FROM incoming)"
                )
            count = conn.execute("SELECT count(*) FROM incoming").fetchone()[0]
            conn.execute("DROP TABLE incoming")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    Store(target).close()  # folds the write-ahead log into the file
    return count


def sync(committed: Path, local: Path) -> int:
    """Brings the committed layer's runs (and a tune's trials, studies and tuned options) into the local layer, the
    folders of the two stores; returns how many runs it copied."""
    copied = merge_runs(committed / "store.sqlite", local / "store.sqlite")
    copied += merge_runs(committed / "tuning" / "store.sqlite", local / "tuning" / "store.sqlite")
    for name in ("tuning/studies.sqlite", tuned_file(Path()).name):
        if (committed / name).is_file() and not (local / name).is_file():
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(committed / name, local / name)
    return copied


def publish(local: Path, committed: Path) -> int:
    """Copies the local layer's finished runs of clean code versions into the committed one, with a tune's trials, its
    studies (where the local file holds every committed study) and its tuned options (the local ones over the
    committed); returns how many runs it copied."""
    studies = Path("tuning") / "studies.sqlite"
    if (local / studies).is_file():  # checked before anything is written: a refused publish changes nothing
        missing = study_names(committed / studies) - study_names(local / studies)
        if missing:
            raise ValueError(
                f"the local {local / studies} lacks the committed studies {', '.join(sorted(missing))}: it did not "
                "start from the committed file; tune those cells locally first, or publish without the studies"
            )
    copied = merge_runs(local / "store.sqlite", committed / "store.sqlite", PUBLISHABLE)
    copied += merge_runs(local / "tuning" / "store.sqlite", committed / "tuning" / "store.sqlite", "1")
    if (local / studies).is_file():
        shutil.copyfile(local / studies, committed / studies)
    if tuned_file(local).is_file():
        held = json.loads(tuned_file(committed).read_text()) if tuned_file(committed).is_file() else {}
        write_tuned(tuned_file(committed), {**held, **json.loads(tuned_file(local).read_text())})
    return copied


def study_names(path: Path) -> set[str]:
    """The names of the Optuna studies in the SQLite file `path` (none where there is no file)."""
    if not path.is_file():
        return set()
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT study_name FROM studies")}
    finally:
        conn.close()
