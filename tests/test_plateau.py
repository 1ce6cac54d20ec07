"""The plateau suite (bench/experiments/scenes_plateau.py): what it runs, and its study's arithmetic."""

import importlib
from pathlib import Path

import pandas as pd
import pytest

from bench.experiments.scenes_leaderboard import scenes
from bench.experiments.scenes_plateau import BEST_OF_N, MODEL, PLATEAU_METHODS, REWARD, scenes_plateau, write_plateau
from bench.experiments.suite import TUNED, validate
from bench.standings import ranked_frames
from bench.store import Store
from methods.best_of_n import candidates_for_budget
from worlds import load_world, world_entry

SCENES_STORE = Path(__file__).resolve().parents[1] / "results" / "scenes" / "store.sqlite"


def test_the_plateau_runs_the_four_best_tuned_methods_of_the_committed_store():
    with Store(SCENES_STORE, read_only=True) as store:
        _, results = ranked_frames(store)
    tuned = results.loc[
        (results["reward"] == REWARD)
        & (results["model"] == MODEL)
        & results["method"].str.endswith(f"/{TUNED}")
        & (results["split"] == "eval_unseen")
        & (results["metric"] == "judge_score")
        & (results["budget"] == results["budget"].max())
    ]
    means = tuned.groupby("method")["value"].mean().sort_values(ascending=False)
    assert len(means) > len(PLATEAU_METHODS)
    assert {m.removesuffix(f"/{TUNED}") for m in means.index[: len(PLATEAU_METHODS)]} == set(PLATEAU_METHODS)


def test_the_plateau_is_ten_leaderboard_budgets_with_the_leaderboard_budget_a_milestone():
    suite, leaderboard = validate(scenes_plateau()), scenes()
    assert suite.budget.unit == leaderboard.budget.unit and suite.budget.amount == 10 * leaderboard.budget.amount
    assert 0.1 in suite.milestones and suite.milestones[-1] == 1.0
    assert [m for m in suite.milestones if m < 0.1] and [m for m in suite.milestones if 0.1 < m < 1.0]
    for method in PLATEAU_METHODS:  # the tuned options, not the defaults
        assert suite.method_config(method, TUNED, MODEL, REWARD) != suite.method_config(method)


def test_best_of_n_spends_the_plateau_budget_with_no_cap_on_its_candidates():
    suite = scenes_plateau()
    steps = world_entry(suite.world).generator_class(MODEL).default_steps
    prompts = len(load_world(suite.world, log=lambda *_: None).prompts["eval_unseen"]) * suite.eval.samples_per_prompt
    cap = suite.method_config("best_of_n").max_candidates
    assert candidates_for_budget("nfe", suite.budget.amount, prompts, steps, cap) < cap
    # where the leaderboard's default cap would have stopped it below its budget
    assert candidates_for_budget("nfe", suite.budget.amount, prompts, steps, 64) == 64


def _cell(label, seed, scores, nfe_per_milestone=None):
    budgets = (30_000, 300_000, 3_000_000)
    return [
        {
            "label": label, "seed": seed, "reward": REWARD, "split": "eval_unseen", "metric": "judge_score",
            "milestone": i, "budget": budget, "nfe": budget if nfe_per_milestone is None else nfe_per_milestone[i],
            "value": score,
        }
        for i, (budget, score) in enumerate(zip(budgets, scores))
    ]  # fmt: skip


def test_the_plateau_study_reads_the_nfe_to_best_of_n_and_the_difference_at_equal_compute(tmp_path):
    dgpo, awm = (f"{m}/{TUNED}@{MODEL}" for m in ("dgpo", "awm"))
    rows = [
        {**row, "milestone": 0, "budget": 0.0, "nfe": 0.0}
        for row in _cell(f"base@{MODEL}", 0, [0.4])
    ]  # fmt: skip
    for seed in (0, 1):
        rows += _cell(BEST_OF_N, seed, [0.6, 0.8, 0.9])
        # dgpo's mean curve 0.4 (base, at 0), 0.5, 0.7, 0.95: reaches 0.8 at 300k + (0.1 / 0.25) * 2.7M = 1.38M
        rows += _cell(dgpo, seed, [0.5 + 0.02 * (2 * seed - 1), 0.7, 0.95 + 0.01 * (2 * seed - 1)])
        rows += _cell(awm, seed, [0.45, 0.5, 0.55])
    frame = pd.DataFrame(rows)
    text = write_plateau(frame, tmp_path).read_text()
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("|")}
    assert table[BEST_OF_N][2:] == ["0.600", "0.800", "0.900 |"]
    assert "Target: best_of_n@scene-flow's score at 300k NFE (the leaderboard's budget), 0.800." in text
    reach, end, best, above = table[dgpo][2:6]
    assert reach.startswith("1.38M")
    # at 3M: 0.95 less 0.9, the seeds 0.94 and 0.96 against 0.9 in every resample
    assert end == "0.050 [0.040, 0.060]" and best == "0.050 [0.040, 0.060] (3M)" and above.strip(" |") == "3M"
    reach, end, best, above = table[awm][2:6]
    assert reach == "never" and end == "-0.350" and best == "-0.150 (30k)" and above.strip(" |") == "none"


def test_the_plateau_study_without_best_of_n_at_the_leaderboard_budget_says_so(tmp_path):
    rows = _cell(f"dgpo/{TUNED}@{MODEL}", 0, [0.5, 0.7, 0.9])
    text = write_plateau(pd.DataFrame(rows), tmp_path).read_text()
    assert "No best_of_n@scene-flow runs at 300k NFE yet: no target." in text
    base_alone = write_plateau(pd.DataFrame(_cell(f"base@{MODEL}", 0, [0.4] * 3)), tmp_path).read_text()
    assert "No runs but the base's yet." in base_alone


@pytest.mark.parametrize("missing", PLATEAU_METHODS)
def test_a_plateau_method_without_tuned_options_says_how_to_tune_it(missing, monkeypatch):
    # the package's name scenes_plateau is the suite's function; the module is what builds it
    plateau = importlib.import_module("bench.experiments.scenes_plateau")
    options = plateau.tuned_options("scenes")
    monkeypatch.setattr(
        plateau, "tuned_options", lambda suite: {k: v for k, v in options.items() if not k.startswith(f"{missing}@")}
    )
    with pytest.raises(ValueError, match=f"no tuned options for {missing}@{MODEL}/{REWARD}.*bench tune"):
        validate(plateau.scenes_plateau())
