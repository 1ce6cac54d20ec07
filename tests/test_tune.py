"""Tuning (bench/tune.py): the tuning split, the trials' runs, the budget, kill and resume, the tuned configs."""

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.experiments import build_suite
from bench.experiments.suite import TUNED, read_tuned, write_tuned
from bench.owners import HOST
from bench.tune import (
    TRIAL_SEED,
    Cell,
    Tune,
    check_tune,
    default_options,
    distributions,
    study_name,
    trial_spec,
    tuning_cells,
)
from methods import METHODS
from models.prompts import TUNE_SPLIT, tuning_split

ROOT = Path(__file__).resolve().parents[1]
# one cell of the smoke suite, tuned with three run budgets
TUNE = ["tune", "--suite", "smoke", "--method", "ddpo@diffusion", "--reward", "digit", "--budget-runs", "3"]


def test_the_tuning_split_is_train_prompts_apart_from_both_evaluation_splits():
    from worlds.digits.data import load_prompts as digits_prompts
    from worlds.scenes.data import load_prompts as scenes_prompts
    from worlds.scenes.rules import parse

    for sets in (digits_prompts(), scenes_prompts()):
        tune = sets[TUNE_SPLIT]
        assert len(tune) == len(sets["eval_seen"]) == len(set(tune))
        assert set(tune) <= set(sets["train"])
        assert not set(tune) & (set(sets["eval_seen"]) | set(sets["eval_unseen"]))
    families = [parse(prompt).family for prompt in scenes_prompts()[TUNE_SPLIT]]
    # balanced over the families: the single digits give the 2 train prompts eval_seen leaves, the others share the rest
    assert sorted(families.count(f) for f in set(families)) == [2, 9, 9, 9, 9, 9, 9]


def test_tuning_split_shares_out_evenly_and_keeps_the_train_order():
    train = [f"a{i}" for i in range(10)] + ["b0"] + [f"c{i}" for i in range(6)]
    chosen = tuning_split(train, seen=["a0", "a1", "a2", "a3", "a4", "a5"], group=lambda p: p[0])
    # six to choose: a share of two each, of which b has one; the one left goes to the first open group, a (a6..a9)
    assert chosen == ["a6", "a7", "a8", "b0", "c0", "c3"]
    assert tuning_split(["x", "y"], seen=["x", "p", "q"]) == ["y"]  # all there are


def test_a_trial_is_evaluated_on_the_tuning_split_alone_with_its_own_seed_and_noise():
    suite = build_suite("scenes")
    spec = trial_spec(suite, Cell("flow_grpo", "scene-flow", "geneval"), {"learning_rate": 1e-5})
    assert spec.eval.splits == (TUNE_SPLIT,) and spec.eval.also_steps == ()
    assert spec.seed == TRIAL_SEED and spec.seed not in range(100)
    assert spec.eval.seed != suite.eval.seed
    assert spec.method_config.learning_rate == 1e-5


def test_every_search_space_is_a_valid_optuna_space_holding_each_models_defaults():
    import optuna

    for world in ("digits", "scenes"):
        suite = build_suite("default" if world == "digits" else "scenes")
        for cell in tuning_cells(suite):
            space = distributions(cell.method)
            for name, value in default_options(suite, cell).items():
                assert value is not None, (cell, name)
                assert space[name]._contains(space[name].to_internal_repr(value)), (cell, name, value)
            assert all(isinstance(d, optuna.distributions.BaseDistribution) for d in space.values())


def test_a_tune_covers_every_trained_method_and_leaves_out_those_with_nothing_to_tune():
    cells = tuning_cells(build_suite("scenes"))
    methods = {cell.method for cell in cells}
    assert "base" not in methods and "best_of_n" not in methods
    assert methods == {m for m, cls in METHODS.items() if cls.trains and cls.search_space} & {
        e.partition("@")[0] for e in build_suite("scenes").methods
    }


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--budget-runs", "0.5"], "smaller than one trial"),
        (["--method", "base"], "no cell to tune"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the tuning storage"),
        (["--suite", "nope"], "unknown suite 'nope'"),
    ],
)
def test_bad_tune_input_is_one_line_and_exit_2_before_anything_trains(arguments, message, tmp_path, capsys):
    base = ["tune", "--suite", "smoke", "--method", "ddpo@diffusion", "--store", str(tmp_path / "store.sqlite")]
    with pytest.raises(SystemExit) as exit_:
        main(base + arguments)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) <= 2 and message in error[-1], error  # argparse's usage line, then the one-line error
    assert not (tmp_path / "tuning" / "store.sqlite").exists()


def test_a_tune_refuses_a_method_that_cannot_run_the_reward_saying_why():
    suite = dataclasses.replace(build_suite("default"), methods=("draft@flow", "base@flow"), rewards=("compress",))
    assert tuning_cells(suite) == []
    with pytest.raises(ValueError, match="draft/compress: needs a differentiable reward; base/compress: nothing to"):
        check_tune(suite, tuning_cells(suite), 8)


def test_tuned_options_round_trip_and_a_tuned_entry_runs_them(tmp_path):
    path = tmp_path / "tuned.json"
    summary = {
        "options": {"learning_rate": 2.5e-05, "clip_range": 0.1, "kl_coef": 0.0},
        "score": 0.5,
        "objective": "eval_tune/judge_score",
        "budget": "nfe:2.4e+06",
        "spent": 2.5e6,
        "trials": [{"number": 0, "state": "pruned", "score": None, "nfe": 7.5e4, "options": {"x": 1}}],
    }
    write_tuned(path, {"ddpo@diffusion/digit": summary})
    tuned = read_tuned(path)
    assert tuned == {"ddpo@diffusion/digit": summary["options"]}
    suite = dataclasses.replace(build_suite("default"), tuned=tuned)
    config = suite.method_config("ddpo", TUNED, "diffusion", "digit")
    assert (config.learning_rate, config.clip_range) == (2.5e-05, 0.1)
    with pytest.raises(ValueError, match=r"no tuned options for ddpo@flow/digit .* python -m bench tune"):
        suite.method_config("ddpo", TUNED, "flow", "digit")


def test_a_trial_just_asked_for_is_left_to_its_worker_and_taken_over_once_that_worker_is_dead(tmp_path):
    """Between asking for a trial and starting its run, a worker holds no lease on it: another worker must not take it
    (both would run it), unless the one that asked is dead."""
    import optuna

    suite = build_suite("smoke")
    storage = f"sqlite:///{tmp_path / 'studies.sqlite'}"
    workers = [
        Tune(suite, Cell("ddpo", "diffusion", "digit"), tmp_path / "store.sqlite", storage, 3, print) for _ in "ab"
    ]
    for worker in workers:
        worker.base_hash = "base"
    first, _ = workers[0].next_trial()
    second, _ = workers[1].next_trial()
    assert (first.number, second.number) == (0, 1)  # not adopted: its asker (this process) is alive
    storage_backend = optuna.load_study(study_name=study_name(suite, workers[0].cell), storage=storage)._storage
    storage_backend.set_trial_user_attr(first._trial_id, "owner", f"{HOST}:{2**22 + 1}")  # a pid no process has
    adopted, _ = workers[1].next_trial()
    assert adopted.number == 0


def _trials(folder: Path) -> list[tuple]:
    """(number, state, value, params) of every trial of a tune's studies, and the splits its trials evaluated."""
    with sqlite3.connect(folder / "tuning" / "studies.sqlite") as db:
        trials = db.execute(
            "SELECT t.number, t.state, v.value FROM trials t LEFT JOIN trial_values v USING (trial_id) ORDER BY number"
        ).fetchall()
        params = db.execute(
            "SELECT t.number, p.param_name, p.param_value FROM trial_params p JOIN trials t USING (trial_id) "
            "ORDER BY t.number, p.param_name"
        ).fetchall()
    return [(*trial, [p[1:] for p in params if p[0] == trial[0]]) for trial in trials]


@pytest.fixture(scope="module")
def tuned_once(tmp_path_factory):
    """The smoke suite's ddpo@diffusion cell tuned straight through, with three run budgets."""
    folder = tmp_path_factory.mktemp("tune")
    assert main([*TUNE, "--store", str(folder / "store.sqlite")]) == 0
    return folder


def test_a_tune_never_evaluates_eval_unseen_and_spends_its_budget_within_one_milestone(tuned_once):
    suite = build_suite("smoke")
    with sqlite3.connect(tuned_once / "tuning" / "store.sqlite") as db:
        splits = {row[0] for row in db.execute("SELECT DISTINCT split FROM metrics")}
        splits |= {row[0] for row in db.execute("SELECT DISTINCT split FROM samples")}
        seeds = {row[0] for row in db.execute("SELECT DISTINCT seed FROM runs")}
        spent = db.execute(
            "SELECT SUM(nfe) FROM milestones m WHERE milestone = (SELECT MAX(milestone) FROM milestones "
            "WHERE run_id = m.run_id)"
        ).fetchone()[0]
    assert splits == {TUNE_SPLIT} and seeds == {TRIAL_SEED}
    budget = 3 * suite.budget.amount
    # a tune stops at the first milestone that spends its budget: past it by at most one milestone's share of a run
    # (the first milestone, or the widest gap between two), which the run itself may pass by its tolerance
    fractions = (0.0, *suite.milestones)
    widest = max(b - a for a, b in zip(fractions, fractions[1:]))
    assert budget <= spent <= budget + widest * suite.budget.amount * (1 + suite.budget_tolerance), spent
    trials = _trials(tuned_once)
    assert trials[0][3] == [("clip_range", 0.2), ("kl_coef", 0.0), ("learning_rate", 3e-05)]  # the defaults first
    assert {state for _, state, _, _ in trials} <= {"COMPLETE", "PRUNED"}
    tuned = read_tuned(tuned_once / "tuned.json")
    assert list(tuned) == ["ddpo@diffusion/digit"]


@pytest.mark.slow
def test_a_tune_killed_at_chosen_moments_resumes_with_no_trial_lost_or_repeated(tuned_once, tmp_path):
    store = tmp_path / "store.sqlite"
    command = [sys.executable, str(ROOT / "tests" / "injected_fault.py"), *TUNE, "--store", str(store)]
    killed = []
    for kind, count in (("step", 5), ("evaluate", 2), ("write", 4)):
        env = {**os.environ, "BENCH_FAULT": f"{kind}:{count}"}
        tune = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert tune.returncode == -signal.SIGKILL, tune.stderr[-2000:]
        # killed within a trial: its run has started, and the next tune takes it over from its checkpoint
        assert [state for _, state, _, _ in _trials(tmp_path)].count("RUNNING") == 1, (kind, _trials(tmp_path))
        killed.append(kind)
    assert main([*TUNE, "--store", str(store)]) == 0
    # the same trials, options, states and scores as the tune that ran straight through: none lost, none run twice
    assert _trials(tmp_path) == _trials(tuned_once)
    assert (tmp_path / "tuned.json").read_text() == (tuned_once / "tuned.json").read_text()
