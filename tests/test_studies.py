"""The study tables' arithmetic: queries to reach a target, and the efficiency ratio per seed."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.experiments.claims_2026 import write_claims
from bench.experiments.direct_vs_pg import write_direct
from bench.experiments.grpo_family import write_grpo
from bench.experiments.multi_reward import write_multi_reward
from bench.experiments.tables import efficiency, queries_to_reach


def test_queries_to_reach_interpolates_to_the_first_crossing():
    queries = np.array([0.0, 100.0, 200.0, 400.0])
    rewards = np.array([-1.0, -0.5, 0.0, -0.2])
    assert queries_to_reach(queries, rewards, -0.75) == 50.0
    assert queries_to_reach(queries, rewards, -0.25) == 150.0
    assert queries_to_reach(queries, rewards, -1.5) == 0.0  # the base already reaches it
    assert queries_to_reach(queries, rewards, 0.1) == math.inf


def _curve(label, seed, points):
    return [
        {
            "label": label,
            "seed": seed,
            "reward": "digit",
            "split": "eval_unseen",
            "metric": "reward",
            "milestone": i,
            "reward_queries": q,
            "value": v,
        }
        for i, (q, v) in enumerate(points)
    ]


def test_efficiency_reaches_the_reference_mean_final_with_the_method_mean_curve():
    rows = (
        _curve("base@consistency", 0, [(0, -1.0)])
        + _curve("ddpo@consistency", 0, [(1000, -0.8), (2000, -0.4)])
        + _curve("ddpo@consistency", 1, [(1000, -0.9), (2000, -0.6)])
        + _curve("rocm@consistency", 0, [(100, -0.5), (200, -0.4)])
        + _curve("rocm@consistency", 1, [(100, -0.7), (200, -0.4)])
    )
    study = efficiency(pd.DataFrame(rows), "rocm@consistency", "ddpo@consistency", "base@consistency", "digit")
    # target -0.5 (mean of -0.4, -0.6); the mean curve -1.0, -0.6, -0.4 at 0, 100, 200 queries reaches it at 150
    assert study["target"][0] == pytest.approx(-0.5) and study["gain"][0] == pytest.approx(0.5)
    assert study["method_queries"] == pytest.approx(150) and study["fraction"][0] == pytest.approx(150 / 2000)
    # each extreme resample has probability 1/16 > 2.5%: the easiest, target -0.6 against the curve through
    # -0.5 at 100, is reached at 80; the hardest, target -0.4, only at 200
    assert study["fraction"][1:] == pytest.approx((80 / 2000, 200 / 2000))


def test_efficiency_below_the_start_is_free_and_above_the_curve_is_never():
    rows = (
        _curve("base@consistency", 0, [(0, -1.0)])
        + _curve("ddpo@consistency", 0, [(1000, -1.2)])
        + _curve("ddpo@diffusion", 0, [(1000, 0.5)])
        + _curve("rocm@consistency", 0, [(100, -0.6)])
    )
    frame = pd.DataFrame(rows)
    assert efficiency(frame, "rocm@consistency", "ddpo@consistency", "base@consistency", "digit")["fraction"] == (
        0,
        0,
        0,
    )
    never = efficiency(frame, "rocm@consistency", "ddpo@diffusion", "base@consistency", "digit")
    assert never["fraction"] == (math.inf,) * 3 and math.isinf(never["method_queries"])


def test_efficiency_without_base_runs_says_what_it_needs():
    rows = _curve("ddpo@consistency", 0, [(1000, -0.5)]) + _curve("rocm@consistency", 0, [(100, -0.4)])
    with pytest.raises(ValueError, match="needs base@consistency runs"):
        efficiency(pd.DataFrame(rows), "rocm@consistency", "ddpo@consistency", "base@consistency", "digit")


def test_efficiency_measures_any_compute_axis():
    rows = [
        {**row, "wall_s": row["reward_queries"] / 10}
        for row in _curve("base@flow", 0, [(0, -1.0)])
        + _curve("flow_grpo@flow", 0, [(1000, -0.6), (2000, -0.2)])
        + _curve("mix_grpo@flow", 0, [(400, -0.5), (800, -0.1)])
    ]
    study = efficiency(pd.DataFrame(rows), "mix_grpo@flow", "flow_grpo@flow", "base@flow", "digit", spent_on="wall_s")
    # target -0.2, reached halfway between 40 s (-0.5) and 80 s (-0.1): 40 + 0.75 * 40 = 70 s of the reference's 200 s
    assert study["method_queries"] == pytest.approx(70) and study["fraction"][0] == pytest.approx(70 / 200)


def _study_cell(label, seed, reward, wall, values):
    """A run's rows at two milestones (half and all of a 1000-NFE budget): `values(fraction)` gives its
    (split, metric, value) triples there."""
    return [
        {
            "label": label, "seed": seed, "reward": reward, "split": split, "metric": metric, "milestone": milestone,
            "budget": 1000 * fraction, "budget_unit": "nfe", "nfe": 1000 * fraction, "reward_queries": 10 * fraction,
            "wall_s": wall * fraction, "value": value,
        }
        for milestone, fraction in enumerate((0.5, 1.0))
        for split, metric, value in values(fraction)
    ]  # fmt: skip


def test_the_grpo_study_answers_each_claim_from_the_cells_it_has(tmp_path):
    def cell(label, seed, gain, wall):
        def values(fraction):
            for split, shift in (("eval_unseen", 0.0), ("eval_unseen@10", -0.1), ("eval_seen", 0.05)):
                yield split, "reward", -1.0 + gain * fraction + shift
                yield from ((split, metric, value) for metric, value in (("judge_acc", 0.9), ("diversity", 30.0)))
                yield split, "fid", 90.0

        return _study_cell(label, seed, "compress", wall, values)

    rows = []
    for seed in (0, 1):
        rows += cell("base@flow", seed, 0.0, 0.0) + cell("flow_grpo@flow", seed, 1.0, 100.0)
        rows += cell("mix_grpo@flow", seed, 2.0, 100.0) + cell("flow_grpo/no-kl@flow", seed, 1.5, 100.0)
    text = write_grpo(pd.DataFrame(rows), tmp_path).read_text()
    # mix_grpo's mean curve -1, 0, 1 over 0, 50, 100 s reaches flow_grpo's final 0 at 50 s: half the wall time
    assert "| mix_grpo@flow | flow_grpo@flow | 0.500 | 0.500 |" in text
    assert "dance_grpo@flow" not in text  # no cells, no rows
    assert "| flow_grpo@flow | 1.000 | 1.000 | 0.900 | 100 |" in text
    assert "| flow_grpo/no-kl@flow | 0.550 | 0.900" in text  # the proxy: eval_seen


def test_the_direct_study_measures_efficiency_and_the_judge_at_equal_reward(tmp_path):
    def cell(label, seed, gain, wall, judge_drop):
        def values(fraction):
            yield "eval_unseen", "reward", -1.0 + gain * fraction
            yield "eval_unseen", "judge_acc", 0.9 - judge_drop * fraction
            yield from (("eval_unseen", "diversity", 30.0), ("eval_unseen", "fid", 90.0))

        return _study_cell(label, seed, "digit", wall, values)

    rows = []
    for seed in (0, 1):
        rows += cell("base@flow", seed, 0.0, 0.0, 0.0) + cell("flow_grpo@flow", seed, 1.0, 100.0, 0.1)
        rows += cell("diffusion_nft@flow", seed, 1.0, 50.0, 0.0) + cell("draft@flow", seed, 2.0, 100.0, 0.4)
        rows += cell("alignprop@flow", seed, 3.0, 100.0, 0.2)
    text = write_direct(pd.DataFrame(rows), tmp_path).read_text()
    # equal curves but for the wall clock: the same queries and NFE, half the seconds
    assert "| diffusion_nft@flow | flow_grpo@flow | 1.000 | 1.000 | 0.500 |" in text
    assert "draft/full@flow" not in text  # no cells, no rows
    # the levels: 0, the lowest final reward of the gaining methods (finals 0, 0, 1, 2), and 0.5, their median.
    # At 0.5: alignprop at its first milestone (judge 0.8), draft halfway to its second (0.6), the others never.
    # At 0: alignprop two thirds of the way to its first milestone (0.833), draft at its first (0.7), flow_grpo at its
    # end (0.8), diffusion_nft at its end (0.9). Best judge at the higher level first, then at the lower one.
    assert "first reaches a reward level: 0.000, the lowest" in text and "0.500, their median" in text
    table = text[text.index("| method | judge acc at reward") :]
    order = ["alignprop@flow | 0.833 | 0.800", "draft@flow | 0.700 | 0.600", "diffusion_nft@flow | 0.900 | —",
             "flow_grpo@flow | 0.800 | —"]  # fmt: skip
    rows = [table.index(f"| {row} |") for row in order]
    assert rows == sorted(rows)


def test_rank_agreement_is_kendalls_tau():
    import scipy.stats

    from bench.experiments.tables import _rank_agreement

    pairs = [(0.5, 0.6), (0.4, 0.7), (0.3, 0.2), (0.45, 0.5)]
    tau = scipy.stats.kendalltau([d for d, _ in pairs], [t for _, t in pairs])[0]
    assert _rank_agreement(pairs).endswith(f"Kendall's tau {tau:+.2f}.")
    assert "needs 3 tuned methods, 2 here" in _rank_agreement(pairs[:2])


def test_the_tuning_table_sets_each_methods_default_beside_its_tuned_runs(tmp_path):
    import json

    from bench.experiments.tables import write_tuning

    def rows(label, seeds_values):
        return [
            {"label": label, "world": "scenes", "reward": "geneval", "model": "scene-flow", "budget": 3e5,
             "budget_unit": "nfe", "split": "eval_unseen", "metric": "judge_score", "seed": s, "value": v}
            for s, v in seeds_values
        ]  # fmt: skip

    frame = pd.DataFrame(
        rows("base@scene-flow", [(0, 0.5)])
        + rows("raft@scene-flow", [(0, 0.4), (1, 0.5)])
        + rows("raft/tuned@scene-flow", [(0, 0.7), (1, 0.8), (2, 0.75)])
    )
    summary = {"options": {"learning_rate": 2.5e-05}, "spent": 2.4e6}
    (tmp_path / "tuned.json").write_text(json.dumps({"raft@scene-flow/geneval": summary}))
    frame.attrs["store"] = str(tmp_path / "store.sqlite")
    out = tmp_path / "tables"  # the tables' folder (a staging one, as write_tables passes): tuned.json is by the store
    out.mkdir()
    table = write_tuning(frame, out).read_text()
    # ranked by the tuned score: raft's tuned 0.75 over base's 0.5; the gain is 0.75 - 0.45
    assert "| raft | 0.450 [0.400, 0.500] | 0.750 [0.700, 0.800] | 0.300" in table
    assert "| 2.4e+06 | learning_rate=2.5e-05 |" in table
    assert table.index("| raft |") < table.index("| base |")
    assert "| base | 0.500 | nothing to tune |" in table
    assert "needs 3 tuned methods, 1 here" in table


def test_the_multi_reward_study_reads_each_term_of_the_reward_and_the_judge(tmp_path):
    def cell(label, seed, compress, digit, judge):
        def values(fraction):
            for split in ("eval_seen", "eval_unseen"):
                terms = {"reward_compress": compress * fraction, "reward_digit": digit * fraction}
                yield split, "reward", sum(terms.values())
                yield from ((split, metric, value) for metric, value in terms.items())
                yield from ((split, "judge_acc", judge), (split, "diversity", 30.0), (split, "fid", 90.0))

        return _study_cell(label, seed, "compress+digit", 100.0, values)

    rows = []
    for seed in (0, 1):
        rows += cell("base@flow", seed, -100.0, -1.0, 0.9) + cell("flow_grpo@flow", seed, -60.0, -3.0 - seed, 0.5)
        rows += cell("gdpo@flow", seed, -80.0, -1.0, 0.8)
    text = write_multi_reward(pd.DataFrame(rows), tmp_path).read_text()
    assert "The trained reward is `compress+digit`" in text
    assert "| method | reward ↑ | compress ↑ | digit ↑ | judge acc ↑ | diversity ↑ | FID ↓ |" in text
    assert "| flow_grpo@flow | -63.500 [-64.000, -63.000] | -60.000 | -3.500 [-4.000, -3.000] | 0.500 |" in text
    assert "| gdpo@flow | -81.000 | -80.000 | -1.000 | 0.800 | 30.000 | 90.000 |" in text
    assert "gardo@flow" not in text  # no cells, no rows


def test_the_claims_study_reads_the_compute_to_the_reference_reward_and_the_judge_there(tmp_path):
    def cell(label, seed, gain, judge_gain):
        def values(fraction):
            reward = 0.2 + 0.4 * gain * fraction
            yield "eval_unseen", "reward", reward
            yield "eval_unseen", "reader_score", reward
            yield "eval_unseen", "judge_score", 0.2 + 0.4 * judge_gain * fraction
            yield "eval_unseen", "diversity", 30.0

        return _study_cell(label, seed, "geneval", 100.0, values)

    rows = []
    for seed in (0, 1):
        rows += cell("base@scene-flow", seed, 0.0, 0.0) + cell("flow_grpo@scene-flow", seed, 1.0, 1.0)
        rows += cell("awm@scene-flow", seed, 2.0, 1.0) + cell("tempflow_grpo@scene-flow", seed, 0.5, 0.0)
    text = write_claims(pd.DataFrame(rows), tmp_path).read_text()
    assert "## AWM (arXiv 2509.25050)\n\nClaim: up to 24x faster than Flow-GRPO. Reward `geneval`." in text
    assert "| flow_grpo@scene-flow | 0.600 | 0.600 | 0.000 | 30.000 | 1 | 1 | 1 | |" in text
    # awm's curve 0.2, 0.6, 1.0 reaches flow_grpo's final 0.6 at its first milestone, half of every compute, where
    # its judge reads 0.4 against flow_grpo's 0.6 (its final reader - judge: 1.0 - 0.6)
    row = "| awm@scene-flow vs flow_grpo@scene-flow | 1.000 | 0.600 | 0.400 | 30.000 | 0.500 | 0.500 | 0.500 | 0.400 |"
    assert row in text
    assert "| dgpo@scene-flow | no runs yet |" in text and "| direct_align@scene-flow | no runs yet |" in text
    # tempflow_grpo ends at 0.4, below flow_grpo's 0.6: flow_grpo passed 0.4 at half its compute, its judge 0.4 there
    assert "| tempflow_grpo@scene-flow vs flow_grpo@scene-flow | 0.400 | 0.200 | 0.200 | 30.000 | never |" in text
    assert "| flow_grpo@scene-flow vs tempflow_grpo@scene-flow | 0.600 | 0.600 | 0.000 | 30.000 | 0.500 |" in text
    assert text.count("| flow_grpo@scene-flow vs tempflow_grpo@scene-flow |") == 1
