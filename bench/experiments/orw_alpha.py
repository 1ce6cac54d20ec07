"""ORW-CFM-W2 without its W2 bound and at three strengths: study `alpha`, every variant at the largest budget by the
bound's weight alpha, per reward.
"""

from __future__ import annotations

import functools

from bench.experiments.suite import Suite
from bench.experiments.tables import write_settings_table

ORW_ALPHAS = (0.0, 0.1, 1.0, 10.0)


def orw_alpha() -> Suite:
    """ORW-CFM-W2 without the W2 bound and at three strengths, on both rewards."""
    variants = {f"orw_cfm_w2/alpha-{alpha:g}": {"alpha": alpha} for alpha in ORW_ALPHAS}
    return Suite(
        "orw-alpha", methods=("base@flow", *(f"{v}@flow" for v in variants)), variants=variants, studies=(write_alpha,)
    )


write_alpha = functools.partial(
    write_settings_table,
    name="alpha",
    settings=("alpha",),
    title="The W2 bound's weight alpha at the largest budget",
)
