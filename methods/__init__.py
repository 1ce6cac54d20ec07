"""Fine-tuning methods, by name. Adding a method: one file in methods/ and one line here (its import, in
`_registry`, and its entry), or a package of one's own that declares it as an entry point in the group
`rlhf_bench.methods` (models/installed.py, docs/extending.md).

The registry `METHODS` is built on first use (PEP 562's module `__getattr__`), so that importing a torch-free module of
this package (methods.options) does not import every method, torch and the worlds with it: the command line checks
its input that way in well under a second."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methods.trainer import Trainer


def __getattr__(name: str) -> dict[str, type[Trainer]]:
    if name == "METHODS":
        methods = _registry()
        if not _checked:
            # after the registry exists: checking a Config at its defaults may read it (the pipeline's second stage)
            _checked.append(True)
            from methods.options import check_search_space

            try:
                for method_name, method in methods.items():
                    check_search_space(method_name, method.Config, method.search_space)
            except ValueError:
                _checked.clear()  # refused again on the next use, not accepted unchecked
                raise
        return methods
    raise AttributeError(f"module 'methods' has no attribute {name!r}")


_checked: list[bool] = []


@functools.cache
def _registry() -> dict[str, type[Trainer]]:
    from methods.adjoint_matching import AdjointMatching
    from methods.aihf import AIHF
    from methods.alignprop import AlignProp
    from methods.awm import AWM
    from methods.base_model import BaseModel
    from methods.best_of_n import BestOfN
    from methods.dance_grpo import DanceGRPO
    from methods.ddpo import DDPO
    from methods.dgpo import DGPO
    from methods.diffusion_nft import DiffusionNFT
    from methods.direct_align import DirectAlign
    from methods.dpo import DiffusionDPO
    from methods.draft import DRaFT
    from methods.elbo import ELBO
    from methods.flow_dppo import FlowDPPO
    from methods.flow_grpo import FlowGRPO
    from methods.gardo import GARDO
    from methods.gdpo import GDPO
    from methods.mix_grpo import MixGRPO
    from methods.orw_cfm_w2 import ORWCFMW2
    from methods.pipeline import RewardModelPipeline
    from methods.pref_grpo import PrefGRPO
    from methods.raft import RAFT
    from methods.refl import ReFL
    from methods.rocm import ROCM
    from methods.sas import ScoresAsActions
    from methods.sft import SFT
    from methods.tempflow_grpo import TempFlowGRPO
    from methods.trainer import Trainer
    from models.installed import installed_entries

    methods: dict[str, type[Trainer]] = {
        "base": BaseModel,
        "best_of_n": BestOfN,
        "raft": RAFT,
        "ddpo": DDPO,
        "rocm": ROCM,
        "orw_cfm_w2": ORWCFMW2,
        "sas": ScoresAsActions,
        "sft": SFT,
        "pipeline": RewardModelPipeline,
        "aihf": AIHF,
        "flow_grpo": FlowGRPO,
        "mix_grpo": MixGRPO,
        "dance_grpo": DanceGRPO,
        "dpo": DiffusionDPO,
        "diffusion_nft": DiffusionNFT,
        "draft": DRaFT,
        "alignprop": AlignProp,
        "refl": ReFL,
        "adjoint_matching": AdjointMatching,
        "awm": AWM,
        "flow_dppo": FlowDPPO,
        "pref_grpo": PrefGRPO,
        "dgpo": DGPO,
        "elbo": ELBO,
        "gdpo": GDPO,
        "gardo": GARDO,
        "tempflow_grpo": TempFlowGRPO,
        "direct_align": DirectAlign,
    }
    methods.update(
        installed_entries(
            "rlhf_bench.methods",
            methods,
            "a Trainer subclass (methods/trainer.py)",
            lambda entry: isinstance(entry, type) and issubclass(entry, Trainer),
        )
    )
    return methods
