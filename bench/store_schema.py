"""What the results store holds (bench/store.py): its SQLite schema and version, the migrations that bring an older
store up to it, the identity of a run as a row records it, and how evaluation samples are encoded.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, fields

import numpy as np

SCHEMA_VERSION = 5
# Versions a read-only open accepts as they are: 4 only added the leases, which readers never touch, and 5 the training
# diagnostics, which a store without them simply lacks (Store.diagnostics_frame reads none).
READABLE_VERSIONS = (3, 4, 5)

FINAL_STATUSES = ("done", "failed", "n/a")
USED_KEYS = ("nfe", "reward_queries", "samples", "labels", "wall_s")

LEASES = """CREATE TABLE leases (
        run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
        owner TEXT NOT NULL,
        heartbeat REAL NOT NULL
    )"""

# One row per run, milestone and diagnostic: its value at each training step between the previous milestone and this
# one, as little-endian float64 (NaN where a step did not report it); the name "nfe" holds the training NFE after
# each step. Bytes of numbers only, read back with numpy: nothing stored can run code.
DIAGNOSTICS = """CREATE TABLE diagnostics (
        run_id TEXT NOT NULL,
        milestone INTEGER NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, milestone, name),
        FOREIGN KEY (run_id, milestone) REFERENCES milestones (run_id, milestone) ON DELETE CASCADE
    )"""

TABLES = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        suite TEXT NOT NULL,
        method TEXT NOT NULL,
        method_version TEXT NOT NULL,
        variant TEXT NOT NULL,
        model TEXT NOT NULL,
        world TEXT NOT NULL,
        reward TEXT NOT NULL,
        seed INTEGER NOT NULL,
        budget_unit TEXT NOT NULL,
        budget REAL NOT NULL,
        config_json TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        git_sha TEXT NOT NULL,
        base_model_hash TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'n/a')),
        reason TEXT,
        started TEXT NOT NULL,
        finished TEXT
    )""",
    """CREATE TABLE milestones (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        milestone INTEGER NOT NULL,
        budget REAL NOT NULL,
        nfe REAL NOT NULL,
        reward_queries REAL NOT NULL,
        samples REAL NOT NULL,
        wall_s REAL NOT NULL,
        labels REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, milestone)
    )""",
    # Metrics and samples hang off their milestone with ON DELETE CASCADE, so re-recording a
    # milestone is "delete the milestone, insert it again" and can never leave stale rows.
    """CREATE TABLE metrics (
        run_id TEXT NOT NULL,
        milestone INTEGER NOT NULL,
        split TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL NOT NULL,
        higher_is_better INTEGER NOT NULL,
        PRIMARY KEY (run_id, milestone, split, metric),
        FOREIGN KEY (run_id, milestone) REFERENCES milestones (run_id, milestone) ON DELETE CASCADE
    )""",
    """CREATE TABLE samples (
        run_id TEXT NOT NULL,
        milestone INTEGER NOT NULL,
        split TEXT NOT NULL,
        prompts_json TEXT NOT NULL,
        shape_json TEXT NOT NULL,
        dtype TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, milestone, split),
        FOREIGN KEY (run_id, milestone) REFERENCES milestones (run_id, milestone) ON DELETE CASCADE
    )""",
    LEASES,  # who is running a run, for a second sweep on the store to skip it
    DIAGNOSTICS,
)

# Older schema version -> the statements that bring a store of it to SCHEMA_VERSION, in place.
MIGRATIONS = {
    2: ("ALTER TABLE milestones ADD COLUMN labels REAL NOT NULL DEFAULT 0", LEASES, DIAGNOSTICS),  # 3: the labels unit
    3: (LEASES, DIAGNOSTICS),  # 4: leases
    4: (DIAGNOSTICS,),  # 5: training diagnostics
}


@dataclass(frozen=True)
class RunRecord:
    """What identifies one run: a (method, model, world, reward, seed) cell of a suite and its config.
    `model` is the world's generator the method fine-tunes (e.g. diffusion, consistency); `variant` labels
    one of several configs of a method within a suite ('' when there is one)."""

    run_id: str
    suite: str
    method: str
    method_version: str
    variant: str
    model: str
    world: str
    reward: str
    seed: int
    budget_unit: str
    budget: float  # the run's total budget, in budget_unit
    config_json: str
    config_hash: str
    git_sha: str
    base_model_hash: str


RUN_FIELDS = tuple(f.name for f in fields(RunRecord))

RESULT_COLUMNS = (
    "schema_version",
    "run_id",
    "suite",
    "git_sha",
    "config_hash",
    "base_model_hash",
    "method",
    "method_version",
    "variant",
    "model",
    "world",
    "reward",
    "seed",
    "budget_unit",
    "milestone",
    "budget",
    "nfe",
    "reward_queries",
    "samples",
    "labels",
    "wall_s",
    "split",
    "metric",
    "value",
    "higher_is_better",
)


def encode_samples(split: str, prompts: list[str], images: np.ndarray) -> tuple[str, str, str, bytes]:
    """A split's evaluation samples as the samples table stores them: prompts, shape, dtype, compressed pixels."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"samples of split {split!r} must be uint8 (N, C, H, W) with C 1 or 3, got {images.dtype} {images.shape}"
        )
    if len(prompts) != images.shape[0]:
        raise ValueError(f"samples of split {split!r}: {len(prompts)} prompts for {images.shape[0]} images")
    data = zlib.compress(np.ascontiguousarray(images).tobytes())
    return json.dumps(list(prompts)), json.dumps(list(images.shape)), images.dtype.str, data


def encode_trace(values: np.ndarray) -> bytes:
    """A diagnostic's per-step values as the diagnostics table stores them."""
    return np.asarray(values, dtype="<f8").tobytes()


def decode_trace(data: bytes) -> np.ndarray:
    """A diagnostics row's per-step values: raw little-endian floats, nothing that runs code."""
    return np.frombuffer(data, dtype="<f8").copy()


def decode_samples(prompts_json: str, shape_json: str, dtype: str, data: bytes) -> tuple[list[str], np.ndarray]:
    """The prompts and images (N, C, H, W) uint8 of a samples row: only JSON and raw pixels, nothing that runs code."""
    images = np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype)).reshape(json.loads(shape_json))
    return json.loads(prompts_json), images.copy()  # frombuffer is read-only
