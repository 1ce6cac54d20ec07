"""Experiments by name: each a module holding a suite (bench/experiments/suite.py: methods x rewards x seeds, a
budget, the methods' options) with the study tables it writes beside its leaderboard, so a suite's variants and the
labels its study reads are written once, side by side. The leaderboard suites' entries come from what each method
declares (suite.py: leaderboard_entries), so a method added to the registry joins them with no edit here.

  default, smoke       every method on the digits world (smoke: its tiny twin, in minutes)
  scenes               every method on the compositional world; study: GenEval's table per prompt family
  scenes-tuned         the scenes suite's tuned configs (`make tune`), 5 fresh seeds, into the scenes store
  scenes-plateau       the four best tuned methods and best-of-N at ten times the budget; study: the compute each
                       needs to reach best-of-N's score, and whether any passes it at equal compute
  rocm-efficiency      ROCM against DDPO; study: the reward queries to reach the other's reward
  rocm-regularization  ROCM by divergence x beta
  orw-alpha            ORW-CFM-W2 by the W2 bound's weight
  sas-discretization   SAS and DDPO evaluated at other sampler steps
  feedback             learning from an annotator, by preference budget
  grpo-family          the GRPO family's claims: speed, denoising reduction, KL or GRPO-Guard
  direct-vs-pg         the direct-gradient and likelihood-free families against the policy gradients
  multi-reward         two rewards at once: GDPO's balance and GARDO's hold on hacking against Flow-GRPO on the sum
  claims-2026          the 2026 methods against their papers' claims on the compositional world; study: a table per
                       claim (claims-2026-ocr: Direct-Align's, on ocr, into the same store)
  pg-diagnostics       the policy-gradient methods' training diagnostics (ratio, trust region, zero-std groups, KL)
                       on the compositional world's GenEval; study: a table of them per method
  nightly-gpu          every method at scale, one GPU through the night (smoke: its CPU twin)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from bench.experiments.claims_2026 import claims_2026, claims_2026_ocr
from bench.experiments.default import default, smoke
from bench.experiments.direct_vs_pg import direct_vs_pg
from bench.experiments.grpo_family import grpo_family
from bench.experiments.multi_reward import multi_reward
from bench.experiments.nightly_gpu import nightly_gpu
from bench.experiments.orw_alpha import orw_alpha
from bench.experiments.pg_diagnostics import pg_diagnostics
from bench.experiments.preference_budget import feedback
from bench.experiments.rocm_efficiency import rocm_efficiency
from bench.experiments.rocm_regularization import rocm_regularization
from bench.experiments.sas_discretization import sas_discretization
from bench.experiments.scenes_leaderboard import scenes, scenes_tuned
from bench.experiments.scenes_plateau import scenes_plateau
from bench.experiments.suite import Suite
from bench.names import check_names

SUITES: dict[str, Callable[..., Suite]] = {
    "default": default,
    "smoke": smoke,
    "rocm-efficiency": rocm_efficiency,
    "rocm-regularization": rocm_regularization,
    "orw-alpha": orw_alpha,
    "sas-discretization": sas_discretization,
    "feedback": feedback,
    "grpo-family": grpo_family,
    "direct-vs-pg": direct_vs_pg,
    "multi-reward": multi_reward,
    "claims-2026": claims_2026,
    "claims-2026-ocr": claims_2026_ocr,
    "pg-diagnostics": pg_diagnostics,
    "scenes": scenes,
    "scenes-tuned": scenes_tuned,
    "scenes-plateau": scenes_plateau,
    "nightly-gpu": nightly_gpu,
}


def build_suite(name: str, smoke: bool = False) -> Suite:
    """Suite `name`, or with `smoke` its CPU-sized twin (for the suites that have one)."""
    check_names("suite", [name], SUITES)
    if not smoke:
        return SUITES[name]()
    sized = [n for n, make in SUITES.items() if "smoke" in inspect.signature(make).parameters]
    if name not in sized:
        raise ValueError(f"suite {name!r} has no --smoke size; suites with one: {', '.join(sized)}")
    return SUITES[name](smoke=True)


__all__ = ["SUITES", "Suite", "build_suite"]
