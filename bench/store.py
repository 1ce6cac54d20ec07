"""The results store: one SQLite file per suite, in WAL mode.

Every run, every metric value at every budget milestone and the evaluation samples behind them
live here; tables and plots are generated from it, never edited by hand. SQLite transactions
are what make resume and concurrent workers safe: each write is one `BEGIN IMMEDIATE`
transaction, so a worker killed mid-write leaves either the whole milestone or none of it, and
two workers on the same file queue for the write lock instead of corrupting each other.

The file is meant to be committed to git, so `close()` folds the write-ahead log back into the
main file: the `.sqlite` alone is then the complete store. Should that fail (a full disk), the log stays
beside it and the next open reads both: nothing recorded is lost.

A run is claimed with a lease (its owner and a heartbeat the owner refreshes): a second sweep on the same
store skips the runs a live owner holds and takes over those whose owner died. Reading a store (the
leaderboard) never writes to it, so a store in a read-only place can be read; a store that is corrupt is
refused at open, with its path and what SQLite's integrity check found.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bench.owners import owner_id, owner_is_dead
from bench.store_schema import (
    FINAL_STATUSES,
    MIGRATIONS,
    READABLE_VERSIONS,
    RESULT_COLUMNS,
    RUN_FIELDS,
    SCHEMA_VERSION,
    TABLES,
    USED_KEYS,
    RunRecord,
    decode_samples,
    decode_trace,
    encode_samples,
    encode_trace,
)

# Generous: a worker waits for another worker's write (milliseconds long) rather than failing.
_BUSY_TIMEOUT_S = 60.0

# A run's owner refreshes its lease this often; a lease not refreshed for LEASE_STALE_S belongs to a dead owner.
HEARTBEAT_S = 10.0
LEASE_STALE_S = 60.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


READ_TABLES = ("runs", "milestones", "metrics", "samples")
"""The tables a reader reads (the leases are the writers')."""


@functools.cache
def _schema_columns() -> dict[str, frozenset[str]]:
    """Table -> its columns, as the schema's statements create them."""
    conn = sqlite3.connect(":memory:")
    try:
        for statement in TABLES:
            conn.execute(statement)
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({table})")) for table in tables}
    finally:
        conn.close()


class Store:
    """A results store on one SQLite file; open one per process (connections are not shared).

    read_only: open an existing store only to read it; nothing in its folder is written (tables are generated
    from it this way)."""

    def __init__(self, path: Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise ValueError(f"no results store at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._conn = self._connect()
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._check_integrity()
            if read_only:
                self._check_readable()
                self._check_tables(READ_TABLES)
            else:
                self._enable_wal()
                # NORMAL is durable across application crashes in WAL mode; only a power loss can
                # drop the last commits, and a resumed run redoes those milestones.
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._init_schema()
                self._check_tables(tuple(_schema_columns()))
        except BaseException as e:
            self._conn.close()
            self._closed = True
            if isinstance(e, sqlite3.OperationalError) and not _busy(e):
                raise ValueError(f"cannot {'read' if read_only else 'write'} the results store {self.path}: {e}") from e
            # OperationalError (e.g. a lock held past the timeout) is not the file's fault.
            if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
                raise ValueError(f"{self.path} is not a SQLite results store: {e}") from e
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # every write opens its own BEGIN IMMEDIATE in _write().
        if not self.read_only:
            return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        uri = self.path.resolve().as_uri()
        beside = [self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")]
        if not any(path.exists() for path in beside):
            # No connection has the store open for writing (a writer keeps its log and shared memory beside it), so
            # the file is the whole store: read as immutable, nothing is created beside it (a WAL reader would leave
            # both files behind).
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
            # A store in WAL mode needs its shared-memory file, which a read-only folder cannot hold. With no
            # write-ahead log beside it, the main file is the whole store and no writer is at work (a writer
            # keeps its log there), so it is read as the immutable file it is.
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size:
                raise
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _check_integrity(self) -> None:
        # quick_check reads every page (milliseconds on a store of megabytes): a damaged store is refused whole
        # rather than half-used until a write trips on it
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorname", "") != "SQLITE_CORRUPT":
                raise
            problems = [str(error)]  # too damaged for the check to walk it
        if problems != ["ok"]:
            raise ValueError(
                f"{self.path} is corrupt (SQLite integrity check: {' '.join(' '.join(problems).split())}); "
                "restore it (e.g. from git) or start a new store"
            )

    def _check_readable(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{self.path} holds results-store schema version {version}; reading needs one of "
                f"{', '.join(map(str, READABLE_VERSIONS))} (open it once for writing to migrate it)"
            )

    def _check_tables(self, tables: tuple[str, ...]) -> None:
        """Refuses a store that lacks one of `tables`, or one of their columns, of the schema (a table dropped or
        altered by hand), before anything reads or writes it."""
        expected = _schema_columns()
        for table in tables:
            present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            missing = sorted(expected[table] - present)
            if missing:
                what = f"no {table} table" if not present else f"a {table} table without {', '.join(missing)}"
                raise ValueError(
                    f"{self.path} has {what}: not a results store of schema {SCHEMA_VERSION}; restore it (e.g. from "
                    "git) or start a new store"
                )

    def _enable_wal(self) -> None:
        # Turning a fresh file to WAL needs an exclusive lock, and SQLite refuses it at once,
        # bypassing the busy timeout, while another worker is opening the same fresh file.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _init_schema(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
                if tables:
                    raise ValueError(
                        f"{self.path} is a SQLite file with tables {sorted(t[0] for t in tables)} "
                        "but no results-store schema version; refusing to write into it"
                    )
                for statement in TABLES:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version in MIGRATIONS:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} holds results-store schema version {version}, this code reads "
                    f"version {SCHEMA_VERSION}; use a fresh store file or a matching checkout"
                )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise ValueError(f"{self.path} was opened read-only")
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads first and
        # then writes can fail with SQLITE_BUSY mid-way instead of waiting for the lock.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise

    @contextmanager
    def snapshot(self) -> Iterator[Store]:
        """Every read inside sees one state of the store, however many runs other workers record
        meanwhile (one read transaction), so files generated together describe the same results."""
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._conn.execute("COMMIT")  # ends the read transaction; nothing was written

    def close(self) -> None:
        """Fold the WAL into the main file (it is committed to git) and close; idempotent. A fold that fails (a
        full disk) loses nothing: the log stays beside the file, and the next open reads both."""
        if self._closed:
            return
        try:
            if not self.read_only:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            print(
                f"warning: {self.path}: the write-ahead log could not be folded into the store ({error}); it stays "
                f"beside it as {self.path.name}-wal, and the next open of the store reads it",
                file=sys.stderr,
            )
        finally:
            self._conn.close()
            self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------

    def run_status(self, run_id: str) -> str | None:
        row = self._conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def start_run(self, run: RunRecord, owner: str | None = None) -> bool:
        """Claim a run for `owner` (default: this process) and mark it 'running'; an existing run is resumed: its
        recorded milestones stay. False, and nothing changed, when another owner holds a live lease on it."""
        owner = owner or owner_id()
        with self._write() as conn:
            row = conn.execute("SELECT config_hash FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO runs ({', '.join(RUN_FIELDS)}, status, started) "
                    f"VALUES ({', '.join('?' * len(RUN_FIELDS))}, 'running', ?)",
                    (*astuple(run), _now()),
                )
            elif row[0] != run.config_hash:
                # Resuming under another config would mix two experiments in one run's rows.
                raise ValueError(
                    f"run {run.run_id!r} exists with config hash {row[0]}, not {run.config_hash}; "
                    "give the new config a new run id"
                )
            else:
                holder = self.holder(run.run_id)
                if holder is not None and holder != owner:
                    return False
                conn.execute(
                    "UPDATE runs SET status = 'running', reason = NULL, finished = NULL WHERE run_id = ?",
                    (run.run_id,),
                )
            conn.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, "
                "heartbeat = excluded.heartbeat",
                (run.run_id, owner, time.time()),
            )
        return True

    def reward_version(self, run_id: str) -> str | None:
        """The version of the reward a recorded run was scored with (None: no such run)."""
        row = self._conn.execute("SELECT config_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]).get("reward_version") if row else None

    def holder(self, run_id: str) -> str | None:
        """The owner of a live lease on the run: one whose heartbeat is fresh and whose process is not known to be
        dead; None when the run is free to claim."""
        row = self._conn.execute("SELECT owner, heartbeat FROM leases WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or time.time() - row[1] > LEASE_STALE_S or owner_is_dead(row[0]):
            return None
        return row[0]

    def heartbeat(self, run_id: str, owner: str | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE leases SET heartbeat = ? WHERE run_id = ? AND owner = ?",
                (time.time(), run_id, owner or owner_id()),
            )

    def release(self, run_id: str, owner: str | None = None) -> None:
        """Give up the lease on a run that stops unfinished (an interrupted sweep), so a new sweep resumes it at
        once."""
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE run_id = ? AND owner = ?", (run_id, owner or owner_id()))

    @contextmanager
    def lease(self, run_id: str) -> Iterator[None]:
        """Keeps this process's lease on the run fresh while the block runs (a thread with its own connection
        beats every HEARTBEAT_S, however long a step or an evaluation takes), and releases it at the end."""
        owner, stop = owner_id(), threading.Event()

        def beat() -> None:
            with Store(self.path) as store:
                while not stop.wait(HEARTBEAT_S):
                    store.heartbeat(run_id, owner)

        thread = threading.Thread(target=beat, name=f"lease {run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release(run_id, owner)

    def finish_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"a run finishes as one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, reason = ?, finished = ? WHERE run_id = ?",
                (status, reason, _now(), run_id),
            )
            if cur.rowcount == 0:
                raise ValueError(f"unknown run {run_id!r}; start_run() it first")

    def record_not_applicable(self, run: RunRecord, reason: str) -> None:
        """Record a cell the method cannot run (e.g. it needs a differentiable reward)."""
        now = _now()
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO runs ({', '.join(RUN_FIELDS)}, status, reason, started, finished) "
                f"VALUES ({', '.join('?' * len(RUN_FIELDS))}, 'n/a', ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET status = 'n/a', reason = excluded.reason, "
                "finished = excluded.finished",
                (*astuple(run), reason, now, now),
            )

    # -- milestones -------------------------------------------------------------------------

    def milestones_recorded(self, run_id: str) -> set[int]:
        rows = self._conn.execute("SELECT milestone FROM milestones WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def record_milestone(
        self,
        run_id: str,
        milestone: int,
        budget: float,
        used: dict[str, float],
        metrics: list[tuple[str, str, float, bool]],
        samples: dict[str, tuple[list[str], np.ndarray]],
        diagnostics: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Record one evaluated milestone in one transaction, replacing any earlier record of it.

        metrics: (split, metric, value, higher_is_better) rows. samples: split -> (prompts,
        uint8 images (N, C, H, W) with C in {1, 3}), stored losslessly (zlib) so they round-trip
        bit for bit. diagnostics: name -> its value at each training step since the previous milestone (all of one
        length; NaN where a step did not report it), as bench/diagnostics.py's Trace gives them.
        """
        if sorted(used) != sorted(USED_KEYS):
            raise ValueError(f"used must have exactly the keys {', '.join(USED_KEYS)}, got {sorted(used)}")
        milestone = int(milestone)  # sqlite3 cannot bind numpy integers
        metric_rows = []
        seen = set()
        for split, metric, value, higher_is_better in metrics:
            value = float(value)
            if (split, metric) in seen:
                raise ValueError(f"metric {split}/{metric} appears twice in milestone {milestone} of {run_id!r}")
            seen.add((split, metric))
            # NaN/inf would poison every mean and interval downstream; a diverged run should be
            # finished as 'failed' with a reason instead.
            if not math.isfinite(value):
                raise ValueError(f"metric {split}/{metric} of {run_id!r} is {value}; only finite values are stored")
            metric_rows.append((run_id, milestone, split, metric, value, int(bool(higher_is_better))))
        sample_rows = [
            (run_id, milestone, split, *encode_samples(split, prompts, images))
            for split, (prompts, images) in samples.items()
        ]
        diagnostics = dict(diagnostics or {})
        if len({len(values) for values in diagnostics.values()}) > 1:
            raise ValueError(f"diagnostics of milestone {milestone} of {run_id!r} must give one value per step each")
        trace_rows = [(run_id, milestone, name, encode_trace(values)) for name, values in diagnostics.items()]
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ValueError(f"unknown run {run_id!r}; start_run() it before recording milestones")
            conn.execute("DELETE FROM milestones WHERE run_id = ? AND milestone = ?", (run_id, milestone))
            conn.execute(
                f"INSERT INTO milestones (run_id, milestone, budget, {', '.join(USED_KEYS)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(USED_KEYS))})",
                (run_id, milestone, float(budget), *(float(used[k]) for k in USED_KEYS)),
            )
            conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", metric_rows)
            conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", sample_rows)
            conn.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?)", trace_rows)

    def readings(self, run_id: str, split: str, metric: str, unit: str) -> dict[int, tuple[float, float]]:
        """Milestone -> (`metric` on `split`, the `unit` used by then) of a run, whatever its status: what a tune
        reads of its trials (bench/tune.py)."""
        if unit not in USED_KEYS:
            raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(USED_KEYS)}")
        rows = self._conn.execute(
            f"SELECT m.milestone, x.value, m.{unit} FROM milestones m JOIN metrics x ON x.run_id = m.run_id AND "
            "x.milestone = m.milestone AND x.split = ? AND x.metric = ? WHERE m.run_id = ?",
            (split, metric, run_id),
        )
        return {milestone: (value, used) for milestone, value, used in rows}

    def samples(self, run_id: str, milestone: int, split: str) -> tuple[list[str], np.ndarray]:
        row = self._conn.execute(
            "SELECT prompts_json, shape_json, dtype, data FROM samples "
            "WHERE run_id = ? AND milestone = ? AND split = ?",
            (run_id, milestone, split),
        ).fetchone()
        if row is None:
            have = [
                r[0]
                for r in self._conn.execute(
                    "SELECT split FROM samples WHERE run_id = ? AND milestone = ?", (run_id, milestone)
                )
            ]
            raise ValueError(
                f"no samples for run {run_id!r}, milestone {milestone}, split {split!r}; "
                f"splits stored there: {sorted(have) or 'none'}"
            )
        return decode_samples(*row)

    def sample_sets(self, run_id: str) -> list[tuple[int, str, set[str]]]:
        """(milestone, split, the metrics recorded for it) of every evaluation set whose samples the run keeps."""
        sets = self._conn.execute(
            "SELECT milestone, split FROM samples WHERE run_id = ? ORDER BY milestone, split", (run_id,)
        ).fetchall()
        recorded: dict[tuple[int, str], set[str]] = {}
        for milestone, split, metric in self._conn.execute(
            "SELECT milestone, split, metric FROM metrics WHERE run_id = ?", (run_id,)
        ):
            recorded.setdefault((milestone, split), set()).add(metric)
        return [(milestone, split, recorded.get((milestone, split), set())) for milestone, split in sets]

    def add_metrics(self, run_id: str, milestone: int, metrics: list[tuple[str, str, float, bool]]) -> None:
        """Adds (split, metric, value, higher_is_better) rows to a recorded milestone (a metric read later from its
        samples: bench/evaluate.py: rescore); a metric it holds already is refused, as is a value that is not finite."""
        rows = []
        for split, metric, value, higher_is_better in metrics:
            if not math.isfinite(float(value)):
                raise ValueError(f"metric {split}/{metric} of {run_id!r} is {value}; only finite values are stored")
            rows.append((run_id, int(milestone), split, metric, float(value), int(bool(higher_is_better))))
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO metrics (run_id, milestone, split, metric, value, higher_is_better) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    # -- frames -----------------------------------------------------------------------------

    def seconds_per_nfe(self) -> dict[tuple[str, str], float]:
        """(method, model) -> the wall seconds its finished runs in this store took per network evaluation (the median
        over their last milestones): what a wall-clock budget's steps cost, by the store's own timings."""
        rows = self._conn.execute(
            "SELECT r.method, r.model, m.wall_s / m.nfe FROM runs r JOIN milestones m USING (run_id) "
            "WHERE r.status = 'done' AND m.nfe > 0 AND m.milestone = "
            "(SELECT MAX(milestone) FROM milestones WHERE run_id = r.run_id)"
        ).fetchall()
        rates: dict[tuple[str, str], list[float]] = {}
        for method, model, rate in rows:
            rates.setdefault((method, model), []).append(rate)
        return {key: float(np.median(values)) for key, values in rates.items()}

    def runs_frame(self) -> pd.DataFrame:
        """One row per run, in the order runs were first started: the RunRecord fields, status, reason,
        started, finished (ISO, UTC)."""
        columns = (*RUN_FIELDS, "status", "reason", "started", "finished")
        # by time, not rowid: a store's layers and publishing copy runs in no particular order
        return pd.read_sql_query(f"SELECT {', '.join(columns)} FROM runs ORDER BY started, rowid", self._conn)

    def diagnostics_frame(self) -> pd.DataFrame:
        """One row per recorded training step of every 'done' run: run_id, milestone (the first milestone recorded
        after the step), step (its place in the run, from 0) and a column per diagnostic (NaN where the step did not
        report it; "nfe" the training NFE after the step). Empty for a store of a schema before diagnostics, or whose
        runs recorded none."""
        held = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'diagnostics'")
        rows = (
            self._conn.execute(
                "SELECT d.run_id, d.milestone, d.name, d.data FROM diagnostics d JOIN runs r USING (run_id) "
                "WHERE r.status = 'done' ORDER BY d.run_id, d.milestone"
            ).fetchall()
            if held.fetchone()
            else []
        )
        segments: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        for run_id, milestone, name, data in rows:
            segments.setdefault((run_id, milestone), {})[name] = decode_trace(data)
        frames = []
        for (run_id, milestone), columns in segments.items():
            frame = pd.DataFrame(columns)
            frame.insert(0, "milestone", milestone)
            frame.insert(0, "run_id", run_id)
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["run_id", "milestone", "step"])
        frame = pd.concat(frames, ignore_index=True)
        frame.insert(2, "step", frame.groupby("run_id").cumcount())
        return frame

    def results_frame(self) -> pd.DataFrame:
        """One row per metric value of every 'done' run, with everything needed to interpret it."""
        frame = pd.read_sql_query(
            f"""SELECT {SCHEMA_VERSION} AS schema_version, r.run_id, r.suite, r.git_sha, r.config_hash,
                       r.base_model_hash, r.method, r.method_version, r.variant, r.model, r.world, r.reward, r.seed,
                       r.budget_unit, m.milestone, m.budget, m.nfe, m.reward_queries, m.samples,
                       m.labels, m.wall_s, x.split, x.metric, x.value, x.higher_is_better
                FROM metrics x
                JOIN milestones m ON m.run_id = x.run_id AND m.milestone = x.milestone
                JOIN runs r ON r.run_id = x.run_id
                WHERE r.status = 'done'
                ORDER BY r.run_id, m.milestone, x.split, x.metric""",
            self._conn,
        )
        frame["higher_is_better"] = frame["higher_is_better"].astype(bool)
        return frame[list(RESULT_COLUMNS)]


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether an error is another connection holding a lock (worth waiting for), not a store that cannot be used."""
    return "locked" in str(error) or "busy" in str(error)
