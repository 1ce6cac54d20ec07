"""rliable's statistics: IQM, stratified bootstrap, probability of improvement, normalized aggregates."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bench.aggregate import aggregate_table, improvement_table, normalized_scores
from bench.stats import bootstrap_ci, iqm, pooled, probability_of_improvement, stratified_bootstrap_ci


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.array([7.0, 1.0, 100.0, 3.0, 4.0, 2.0, 5.0, 6.0])) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # too few seeds to cut: the mean


def test_iqm_interval_resists_an_outlier_seed():
    values = [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 5.0]
    mean, mean_lo, mean_hi = bootstrap_ci(values)
    center, iqm_lo, iqm_hi = bootstrap_ci(values, iqm)
    assert mean == pytest.approx(1.08875) and center == pytest.approx(0.535)  # mean of 0.52 .. 0.55
    assert iqm_hi - iqm_lo < mean_hi - mean_lo


def test_stratified_bootstrap_resamples_each_stratum_on_its_own():
    # Pooled mean of a constant stratum and a varying one of equal size: only the second moves, so the
    # interval is exactly half the plain bootstrap interval of the second (same seed, same resamples).
    _, lo, hi = bootstrap_ci([1.0, 2.0, 3.0])
    assert stratified_bootstrap_ci([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], pooled(np.mean)) == pytest.approx(
        (1.0, lo / 2, hi / 2)
    )
    assert stratified_bootstrap_ci([[0.5], [0.7, 0.7]], pooled(np.mean)) == pytest.approx((1.9 / 3,) * 3)


def test_probability_of_improvement_is_the_mann_whitney_statistic_averaged_over_tasks():
    assert probability_of_improvement([[3.0, 4.0]], [[1.0, 2.0]]) == (1.0, 1.0, 1.0)
    assert probability_of_improvement([[1.0, 2.0]], [[1.0, 2.0]])[0] == pytest.approx(0.5)  # ties count half
    rng = np.random.default_rng(0)
    x = [rng.normal(0.5, 1, 5), rng.normal(0, 1, 4)]
    y = [rng.normal(0, 1, 5), rng.normal(0, 1, 6)]
    expected = np.mean([scipy.stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)) for a, b in zip(x, y)])
    p, lo, hi = probability_of_improvement(x, y)
    assert p == pytest.approx(expected) and 0 <= lo < p < hi <= 1
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(x, y[:1])


def results_frame(values):
    """values: {(method, reward, budget): [value per seed]} -> rows like Store.results_frame()."""
    rows = [
        {
            "method": m,
            "model": "diffusion",
            "reward": r,
            "budget_unit": "nfe",
            "budget": b,
            "seed": seed,
            "split": "eval_unseen",
            "metric": metric,
            "value": v * scale,
            "higher_is_better": True,
        }
        for (m, r, b), vs in values.items()
        for seed, v in enumerate(vs)
        for metric, scale in (("reward", 1.0), ("judge_acc", 0.01))
    ]
    return pd.DataFrame(rows)


def test_scores_are_normalized_per_task_between_base_and_the_best_cell():
    results = results_frame(
        {
            ("base", "digit", 100.0): [1.0, 1.0],
            ("a", "digit", 100.0): [2.0, 4.0],
            ("b", "digit", 100.0): [1.0, 2.0],
            # another scale entirely: normalization is what makes the two tasks comparable
            ("base", "compress", 100.0): [-100.0, -100.0],
            ("a", "compress", 100.0): [-50.0, -50.0],
            ("b", "compress", 100.0): [-100.0, 0.0],
            ("base", "flat", 100.0): [5.0, 5.0],
            ("a", "flat", 100.0): [4.0, 5.0],  # nobody beats base
        }
    )
    scores, notes = normalized_scores(results, "eval_unseen")
    assert notes == ["diffusion, flat, nfe: no cell beats base"]
    assert normalized_scores(results[results["reward"] == "flat"], "eval_unseen")[0].empty
    by = scores.groupby(["method", "reward"])["score"].apply(list).to_dict()
    assert by[("base", "digit")] == [0.0, 0.0] and by[("a", "digit")] == [0.5, 1.5]
    assert by[("b", "compress")] == [0.0, 2.0]  # best cell mean is -50 (a and b tie)
    table = aggregate_table(scores).set_index("method")
    assert table.loc["a", "mean"] == pytest.approx((0.5 + 1.5 + 1.0 + 1.0) / 4)
    assert table.loc["a", "tasks"] == "compress, digit" and table.loc["a", "n_runs"] == 4
    assert table.loc["base", ["mean", "mean_lo", "mean_hi", "iqm"]].tolist() == [0.0] * 4
    assert table.loc["a", "mean_lo"] < table.loc["a", "mean"] < table.loc["a", "mean_hi"]


def test_improvement_table_compares_every_pair_at_the_largest_budget():
    results = results_frame(
        {
            ("a", "digit", 50.0): [0.0, 0.0],
            ("b", "digit", 50.0): [9.0, 9.0],  # not the final budget
            ("a", "digit", 100.0): [3.0, 4.0],
            ("b", "digit", 100.0): [1.0, 2.0],
            ("a", "compress", 100.0): [1.0, 2.0],
            ("b", "compress", 100.0): [1.0, 2.0],
            ("c", "digit", 100.0): [0.0, 0.0],
        }
    )
    table = improvement_table(results, "eval_unseen", "judge_acc")
    reward = table[table["metric"] == "reward"].set_index(["method_a", "method_b"])
    assert len(reward) == 6 and set(table["budget"]) == {100.0}
    assert reward.loc[("a", "b"), "p"] == pytest.approx((1.0 + 0.5) / 2)
    assert reward.loc[("b", "a"), "p"] == pytest.approx((0.0 + 0.5) / 2)
    assert reward.loc[("a", "c"), "tasks"] == "digit" and reward.loc[("a", "c"), "p"] == 1.0


def test_shared_places_read_as_ties_and_a_shared_ceiling_as_saturation():
    import pandas as pd

    from bench.formats import rank_text
    from bench.standings import ties_at_the_top

    assert (rank_text(1, 3), rank_text(2, 1), rank_text(0, 0), rank_text(float("nan"), 0)) == ("=1", "2", "—", "—")
    column = "eval_unseen/judge_acc/mean"
    ranked = pd.DataFrame(
        {
            "reward": ["digit"] * 6,
            "model": ["flow"] * 3 + ["diffusion"] * 3,
            "method": ["base", "raft", "ddpo", "base", "sas", "dpo"],
            "rank": [0, 1, 1, 0, 1, 1],
            "tied": [0, 2, 2, 0, 2, 2],
            column: [0.98, 1.0, 1.0, 0.5, 0.9, 0.9],
        }
    )
    lines = ties_at_the_top(ranked, "eval_unseen", "judge_acc")
    assert lines == [
        "digit @ flow: 2 methods tie at #1 (judge_acc 1.000: saturated, the headline's ceiling): raft, ddpo; read the "
        "other columns",
        "digit @ diffusion: 2 methods tie at #1 (judge_acc 0.900: the headline does not separate them): sas, dpo; read "
        "the other columns",
    ]
    assert ties_at_the_top(ranked.assign(tied=[0, 1, 1, 0, 1, 1]), "eval_unseen", "judge_acc") == []
