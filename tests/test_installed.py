"""Methods, rewards and worlds from installed packages (models/installed.py): the example package in
tests/example_plugin, installed, runs its method in the smoke suite; bad entry points are refused by name."""

import os
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import models.installed
from methods import METHODS
from methods.trainer import Trainer
from models.installed import installed_entries

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "example_plugin"


def is_trainer(entry):
    return isinstance(entry, type) and issubclass(entry, Trainer)


def declared(monkeypatch, *points: tuple[str, str]):
    """Pretends that installed packages declare these (name, "module:attribute") methods."""
    found = [EntryPoint(name, value, "rlhf_bench.methods") for name, value in points]
    monkeypatch.setattr(models.installed, "entry_points", lambda group: [p for p in found if p.group == group])


def test_an_installed_method_is_loaded_by_its_entry_point_name(monkeypatch):
    declared(monkeypatch, ("another_ddpo", "methods.ddpo:DDPO"))
    assert installed_entries("rlhf_bench.methods", dict(METHODS), "a Trainer", is_trainer) == {
        "another_ddpo": METHODS["ddpo"]
    }


@pytest.mark.parametrize(
    "points, message",
    [
        ([("ddpo", "methods.ddpo:DDPO")], "entry 'ddpo', which is built in; rename it"),
        ([("mine", "methods.ddpo:DDPO"), ("mine", "methods.raft:RAFT")], "entry 'mine' is declared by both"),
        ([("mine", "methods.ddpo:Config")], "entry 'mine' (methods.ddpo:Config) is not a Trainer"),
    ],
)
def test_a_bad_entry_point_is_refused_by_name(monkeypatch, points, message):
    declared(monkeypatch, *points)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        installed_entries("rlhf_bench.methods", dict(METHODS), "a Trainer", is_trainer)
    with pytest.raises(ValueError, match="unknown entry-point group 'rlhf_bench.judges'"):
        installed_entries("rlhf_bench.judges", {}, "a judge", callable)


@pytest.mark.slow
def test_the_example_package_installed_runs_its_method_in_the_smoke_suite(tmp_path):
    """pip installs tests/example_plugin (offline: no index, the environment's setuptools); with it on the path its
    method is listed by `bench run --help` with its options in `--help-method rloo`, runs in the smoke suite and keeps
    the methods' contract (the contract tests, run over it) like a built-in one."""
    target, source = tmp_path / "site", tmp_path / "example"
    shutil.copytree(EXAMPLE, source)  # the build writes beside its sources: a copy keeps the repository clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
        + ["--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}

    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    assert "rloo" in " ".join(bench("run", "--help").stdout.split())  # among the methods --method takes
    help_text = " ".join(bench("run", "--help-method", "rloo").stdout.split())  # argparse wraps the help's lines
    assert "--rloo.learning_rate" in help_text and "a consistency sampler's noise is its own" in help_text
    store = tmp_path / "store.sqlite"
    cells = ["--method", "rloo", "--reward", "digit,compress", "--seeds", "1"]
    run = bench("run", "--suite", "smoke", *cells, "--store", str(store), "--progress", "never")
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(store) as db:
        # it joined the smoke suite on each of its three families, as a built-in method does: the two rewards on each
        assert db.execute("select method, status from runs").fetchall() == [("rloo", "done")] * 6
    # the contract every registered method keeps, now over the installed one too
    contract = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_methods.py", "-k", "rloo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert contract.returncode == 0 and " passed" in contract.stdout and "failed" not in contract.stdout, (
        contract.stdout
    )
