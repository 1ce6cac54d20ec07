"""Two rewards at once, and the two 2026 methods built for them against Flow-GRPO on their weighted sum; study
`multi-reward`, their claims: GDPO's balance across the rewards, and GARDO's hold on reward hacking and diversity.

The reward is `compress+digit`: the hackable compressibility (minus the PNG's bytes, whose spread within a group is
tens of bytes) beside the digit classifier's log-probability (a spread of a few nats). On their sum GRPO's group
normalization follows compress almost alone (GDPO's "reward signal collapse"); GDPO normalizes each term in its group
first. GARDO reads compress, the spec's first term, as its proxy and digit as its auxiliary: its KL falls on the
samples compress prizes above what digit does. The judge, which no method sees, says whether the digits survive.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.experiments.suite import Suite
from bench.experiments.tables import PRIMARY_SPLIT, TRAIN_SPLIT, by_seed, cell_of, ci, flow_study
from models.io import atomic_write_bytes

MULTI_REWARD = "compress+digit"
MULTI_REWARD_METHODS = ("base", "flow_grpo", "gdpo", "gardo")


def multi_reward() -> Suite:
    """Flow-GRPO, GDPO and GARDO (and the base model) on the weighted sum `compress+digit`, flow model, 3 seeds,
    300k NFE."""
    return Suite(
        "multi-reward",
        methods=tuple(f"{m}@flow" for m in MULTI_REWARD_METHODS),
        rewards=(MULTI_REWARD,),
        studies=(write_multi_reward,),
    )


def write_multi_reward(results: pd.DataFrame, out: Path) -> Path:
    """Each term of the reward and the judge, per method at the full budget."""
    final, _, reward, lines = flow_study(results, "multi-reward", "Two rewards at once: GDPO's and GARDO's claims")
    terms = sorted(m.removeprefix("reward_") for m in final["metric"].unique() if m.startswith("reward_"))
    lines += [
        f"The trained reward is `{reward}`, the sum of its terms. GDPO claims a better balance across the rewards than "
        "GRPO on their weighted sum; GARDO less reward hacking and more diversity at the same reward. Each term is "
        f"read unweighted on the train phrasings (`{TRAIN_SPLIT}`); the judge's accuracy, diversity and FID on "
        "unseen phrasings.",
        "",
        "| method | reward ↑ | " + " | ".join(f"{term} ↑" for term in terms) + " | judge acc ↑ | diversity ↑ | FID ↓ |",
        "|---|---|" + "---|" * len(terms) + "---|---|---|",
    ]
    for method in MULTI_REWARD_METHODS:
        cell = cell_of(final, f"{method}@flow")
        if cell.empty:
            continue
        values = [by_seed(cell, TRAIN_SPLIT, metric) for metric in ("reward", *(f"reward_{t}" for t in terms))]
        values += [by_seed(cell, PRIMARY_SPLIT, metric) for metric in ("judge_acc", "diversity", "fid")]
        lines.append(f"| {method}@flow | " + " | ".join(ci(v.to_numpy()) for v in values) + " |")
    path = out / "multi-reward.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
