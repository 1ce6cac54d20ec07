"""ROCM with every divergence at two strengths and without one: study `regularization`, every variant at the
largest budget (train reward, the proxy on train phrasings; judge accuracy on unseen phrasings, diversity and FID), by
divergence x beta.
"""

from __future__ import annotations

import functools

from bench.experiments.suite import Suite
from bench.experiments.tables import write_settings_table

# beta per divergence, a weak and a strong setting each, matched for small shifts: for a mean shift of z
# stds, KL and reverse KL are z^2 / 2 per dimension, chi-square z^2, JS and squared Hellinger z^2 / 8;
# total variation grows like 0.4 z, so it pulls harder on small shifts than the others
REGULARIZATION_BETAS = {
    "kl": (1e-3, 1e-2),
    "reverse_kl": (1e-3, 1e-2),
    "chi2": (5e-4, 5e-3),
    "js": (4e-3, 4e-2),
    "hellinger": (4e-3, 4e-2),
    "tv": (1e-3, 1e-2),
}


def rocm_regularization() -> Suite:
    """ROCM with every divergence at two strengths and without one, on `digit`."""
    variants: dict[str, dict[str, object]] = {"rocm/none": {"divergence": "none"}}
    for divergence, betas in REGULARIZATION_BETAS.items():
        for beta in betas:
            variants[f"rocm/{divergence}-{beta:g}"] = {"divergence": divergence, "beta": beta}
    return Suite(
        "rocm-regularization",
        methods=("base@consistency", *(f"{v}@consistency" for v in variants)),
        rewards=("digit",),
        variants=variants,
        studies=(write_regularization,),
    )


write_regularization = functools.partial(
    write_settings_table,
    name="regularization",
    settings=("divergence", "beta"),
    title="Regularization: divergence x beta at the largest budget",
)
