"""Training diagnostics (bench/diagnostics.py): what each step records, how it reaches the store and the report."""

import filecmp
import math
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from bench.diagnostics import FIRST_PASS_TOLERANCE, Trace, first_pass_warning
from bench.meter import Meter, MeteredReward
from bench.report import write_results
from bench.runner import execute
from bench.store import Store
from methods.ddpo import DDPO
from rewards.combined import CombinedReward
from worlds import REWARDS


def test_the_meter_keeps_the_scores_of_the_trainings_queries_alone(tiny_world):
    meter = Meter()
    digit = REWARDS["digit"].from_world(tiny_world)
    reward = MeteredReward(digit, meter)
    images, prompts = torch.rand(3, 1, 8, 8), ["the digit 4"] * 3
    scores = reward(images, prompts)
    with meter.charging("eval"):
        reward(images, prompts)  # evaluation's queries are not the training's
    assert torch.equal(meter.take_scores(), scores) and len(meter.take_scores()) == 0
    # a combined reward's terms are read one by one; the step's scores are their weighted sum, as a call gives
    compress = REWARDS["compress"].from_world(tiny_world)
    combined = MeteredReward(
        CombinedReward("digit+0.5*compress", {"digit": (1.0, digit), "compress": (0.5, compress)}), meter
    )
    terms = combined.components(images, prompts)
    torch.testing.assert_close(meter.take_scores(), terms["digit"] + 0.5 * terms["compress"])


def test_a_trace_gives_a_value_per_step_and_keeps_the_harness_names_its_own():
    trace = Trace()
    trace.add({"loss": 1.0}, 10.0, torch.tensor([1.0, 3.0]), [2.0, 4.0])
    trace.add({"kl": 0.5}, 20.0, torch.zeros(0), [])
    columns = trace.columns()
    assert list(columns) == ["loss", "nfe", "scored_mean", "scored_std", "grad_norm", "kl"]
    assert columns["nfe"].tolist() == [10.0, 20.0] and columns["scored_mean"][0] == 2.0
    assert columns["scored_std"][0] == 1.0 and columns["grad_norm"][0] == 3.0
    assert math.isnan(columns["loss"][1]) and math.isnan(columns["scored_mean"][1]) and math.isnan(columns["kl"][0])
    for name in ("grad_norm", "step"):
        with pytest.raises(ValueError, match=f"reported {name}, a name the harness records itself"):
            trace.add({name: 1.0}, 30.0, torch.zeros(0), [])
    restored = Trace()
    restored.load_state_dict(trace.state_dict())
    assert restored.steps == trace.steps


def test_a_first_pass_that_strays_is_one_warning_in_the_log_and_marked_in_the_report(tiny_world, tmp_path, monkeypatch):
    from test_harness import smoke_spec

    assert first_pass_warning({"ratio_first_max_dev": FIRST_PASS_TOLERANCE}) is None
    original = DDPO.step
    monkeypatch.setattr(DDPO, "step", lambda self: {**original(self), "ratio_first_max_dev": 0.01})
    lines = []
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(smoke_spec(), tiny_world, store, tmp_path / "ck", log=lines.append) == "done"
        warnings = [line for line in lines if "warning: first-pass ratio 1.010000 is 1.0e-02 from 1" in line]
        assert len(warnings) == 1, lines  # once per run, however many steps stray
        write_results(store, tmp_path / "out")
    assert "1.0e-02 ⚠ 1 of 1" in (tmp_path / "out" / "report.html").read_text()


def test_a_store_without_diagnostics_writes_every_other_file_as_one_with_them(reference_sweep, tmp_path):
    """The diagnostics add their figure and section and change nothing else: the tables of a committed store of the
    schema before them regenerate byte for byte."""
    shutil.copy(reference_sweep, tmp_path / "with.sqlite")
    shutil.copy(reference_sweep, tmp_path / "without.sqlite")
    conn = sqlite3.connect(tmp_path / "without.sqlite")
    conn.executescript("DROP TABLE diagnostics; PRAGMA user_version = 4;")
    conn.close()
    for name in ("with", "without"):
        with Store(tmp_path / f"{name}.sqlite", read_only=True) as store:
            write_results(store, tmp_path / name)
    extra = {path.name for path in (tmp_path / "with").iterdir()} - {p.name for p in (tmp_path / "without").iterdir()}
    assert extra == {"diagnostics_digit.png", "diagnostics_compress.png"}
    same, different, _ = filecmp.cmpfiles(
        tmp_path / "with", tmp_path / "without", sorted(p.name for p in (tmp_path / "without").iterdir()), shallow=False
    )
    assert different == ["report.html"] and len(same) > 10
    page = (tmp_path / "without" / "report.html").read_text()
    assert (
        "Training diagnostics" not in page and "Training diagnostics" in (tmp_path / "with" / "report.html").read_text()
    )


def test_the_reference_sweeps_policy_gradient_runs_record_every_step(reference_sweep):
    with Store(reference_sweep, read_only=True) as store:
        frame, runs = store.diagnostics_frame(), store.runs_frame().set_index("run_id")
    methods = frame["run_id"].map(runs["method"])
    assert set(methods) == {"ddpo"}  # the base model trains no steps
    ddpo = frame[methods == "ddpo"]
    assert np.isfinite(ddpo[["nfe", "scored_mean", "grad_norm", "ratio_first_max_dev", "clip_frac"]]).all().all()
    # (the flow model's compress rewards are all equal: no advantage, no gradient)
    assert (ddpo["ratio_first_max_dev"] < FIRST_PASS_TOLERANCE).all() and (ddpo["grad_norm"] > 0).any()
    # a run's steps in order: the training NFE grows by one step's cost each
    for _, steps in ddpo.groupby("run_id"):
        assert (np.diff(steps["nfe"]) > 0).all() and steps["step"].tolist() == list(range(len(steps)))


def test_the_pg_diagnostics_study_tables_each_methods_diagnostics_beside_its_reward_and_judge(tmp_path, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)  # the sweep's local layer goes here
    argv = ["run", "--suite", "pg-diagnostics", "--smoke", "--method", "base,flow_grpo,flow_grpo/cps,ddpo"]
    assert main([*argv, "--seeds", "1", "--store", str(tmp_path / "store.sqlite"), "--progress", "never"]) == 0
    lines = (tmp_path / "diagnostics.md").read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    header = rows[0]
    assert all(len(row) == len(header) for row in rows)  # no cell holds a column's bar
    body = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    assert sorted(body) == ["ddpo", "flow_grpo", "flow_grpo/cps"]  # the base model trains no steps
    for row in body.values():
        assert row["seeds"] == "1" and row["first-pass ρ, farthest from 1"] and row["zero-std groups"]
        assert float(row["reward, last 10%"]) >= 0 and row["judge"]
    assert body["flow_grpo"]["KL, last 10%"] and not body["ddpo"]["KL, last 10%"]  # DDPO has no KL


def test_diagnostics_of_runs_the_leaderboard_does_not_rank_leave_no_table():
    from bench.diagnostics import summary_table

    diagnostics = pd.DataFrame({"run_id": ["old"], "milestone": [0], "step": [0], "nfe": [10.0], "kl": [0.5]})
    runs = pd.DataFrame(
        {
            "run_id": ["new"],
            "reward": ["digit"],
            "method": ["ddpo"],
            "model": ["flow"],
            "budget_unit": ["nfe"],
            "budget": [1.0],
        }
    )
    assert summary_table(runs, diagnostics).empty
