"""The study tables' arithmetic: queries to reach a target, and the efficiency ratio per seed."""
import math

import numpy as np
import pandas as pd
import pytest

from bench.studies import efficiency, queries_to_reach


def test_queries_to_reach_interpolates_to_the_first_crossing():
    queries = np.array([0.0, 100.0, 200.0, 400.0])
    rewards = np.array([-1.0, -0.5, 0.0, -0.2])
    assert queries_to_reach(queries, rewards, -0.75) == 50.0
    assert queries_to_reach(queries, rewards, -0.25) == 150.0
    assert queries_to_reach(queries, rewards, -1.5) == 0.0  # the base already reaches it
    assert queries_to_reach(queries, rewards, 0.1) == math.inf


def _curve(label, seed, points):
    return [{"label": label, "seed": seed, "reward": "digit", "split": "eval_unseen", "metric": "reward",
             "milestone": i, "reward_queries": q, "value": v} for i, (q, v) in enumerate(points)]


def test_efficiency_is_the_method_queries_over_the_reference_queries_per_seed():
    rows = (_curve("base@consistency", 0, [(0, -1.0)])
            + _curve("ddpo@consistency", 0, [(1000, -0.8), (2000, -0.5)])
            + _curve("rocm@consistency", 0, [(100, -0.6), (200, -0.4)])
            + _curve("ddpo@consistency", 1, [(1000, -0.9), (2000, -1.2)])  # ends below the base
            + _curve("rocm@consistency", 1, [(100, -0.6), (200, -0.4)]))
    study = efficiency(pd.DataFrame(rows), "rocm@consistency", "ddpo@consistency", "base@consistency", "digit")
    # seed 0: target -0.5 is reached halfway between 100 (-0.6) and 200 (-0.4) queries
    assert study["ratios"][0] == pytest.approx(150 / 2000)
    assert study["reached"][0] == pytest.approx((-0.5, 0.5, 2000, 150))
    # seed 1: the reference lost reward, so the base model (0 queries) already reaches its final
    assert study["ratios"][1] == 0.0
    assert study["reached"][1] == pytest.approx((-1.2, -0.2, 2000, 0))


def test_efficiency_without_base_runs_says_what_it_needs():
    rows = _curve("ddpo@consistency", 0, [(1000, -0.5)]) + _curve("rocm@consistency", 0, [(100, -0.4)])
    with pytest.raises(ValueError, match="needs base@consistency runs"):
        efficiency(pd.DataFrame(rows), "rocm@consistency", "ddpo@consistency", "base@consistency", "digit")
