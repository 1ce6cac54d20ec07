"""The nightly GPU run: every method at scale, on the scale world's models, and its CPU twin on the tiny scale world.

Each method runs on the nightly model of its first family (Trainer.families): SD 1.5 for the diffusion methods (the
policy-gradient, ranking, inference-time, feedback and direct-gradient ones; AlignProp checkpointed through the chain,
as its paper), the LCM for ROCM (whose backward through 50 SD steps with its divergence would not fit a night), and
SD3.5-medium, the field's flow base, for ORW-CFM-W2, the GRPO family, DiffusionNFT and Adjoint Matching; a method
added to the registry joins it there. The cross-family comparisons are chosen (CROSS_FAMILY), and the base model runs
on every model in the grid.
"""

from __future__ import annotations

import dataclasses

from bench.budget import Budget
from bench.evaluate import EvalConfig
from bench.experiments.default import small_configs
from bench.experiments.suite import Suite
from methods import METHODS

NIGHTLY_MODELS = {"diffusion": "sd15", "consistency": "lcm", "flow": "sd35"}
"""Each family's model at scale (SD3-medium stays in the world as `sd3`, for CROSS_FAMILY)."""
CROSS_FAMILY = (
    # DDPO on all three families, as the common reference
    "ddpo@lcm",
    "ddpo@sd35",
    # the methods that run on both diffusion and flow models, on the other one too
    "dance_grpo@sd15",
    "dpo@sd35",
    "draft@sd35",
    # Flow-GRPO, the field's flow method, on SD3-medium and FLUX.1-dev too
    "flow_grpo@sd3",
    "flow_grpo@flux",
)


def nightly_entries() -> tuple[str, ...]:
    """Every method on the nightly model of its first family, the chosen cross-family runs, and the base model on
    every other model they use."""
    entries = [f"{name}@{NIGHTLY_MODELS[method.families[0]]}" for name, method in METHODS.items()]
    used = dict.fromkeys(entry.partition("@")[2] for entry in entries + list(CROSS_FAMILY))
    return (*entries, *CROSS_FAMILY, *(f"base@{model}" for model in used if f"base@{model}" not in entries))


# Batches a LoRA step fits in one 80 GB GPU with gradient checkpointing at 512 px. The policy-gradient methods
# re-evaluate one trained step per network call there, the batch measured to fit; batching several (their default,
# STEPS_PER_CALL) multiplies that call's activations and is unmeasured on a GPU.
ONE_STEP_PER_CALL = {"steps_per_call": 1}
NIGHTLY_OVERRIDES = {
    "best_of_n": {"max_candidates": 8},
    "raft": {"prompts_per_iter": 8, "samples_per_prompt": 4, "updates_per_iter": 1},
    "ddpo": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4, **ONE_STEP_PER_CALL},
    "sas": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4, **ONE_STEP_PER_CALL},
    "rocm": {"prompts_per_iter": 2, "samples_per_prompt": 2, "gradient_checkpointing": True},
    "orw_cfm_w2": {"prompts_per_iter": 4, "samples_per_prompt": 4, "updates_per_iter": 1},
    "flow_grpo": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4, **ONE_STEP_PER_CALL},  # as ddpo's
    "mix_grpo": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4, **ONE_STEP_PER_CALL},
    "dance_grpo": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4, **ONE_STEP_PER_CALL},
    "dpo": {"prompts_per_iter": 8, "samples_per_prompt": 4, "sample_steps": 20, "batch": 4},
    "sft": {"batch": 8},
    "draft": {"prompts_per_iter": 4, "samples_per_prompt": 2, "gradient_checkpointing": True},
    "alignprop": {"prompts_per_iter": 2, "samples_per_prompt": 2},  # checkpointed through up to all 50 steps
    "refl": {"prompts_per_iter": 4, "samples_per_prompt": 2, "pretrain_pool": 32, "pretrain_batch": 4},
    "diffusion_nft": {"prompts_per_iter": 4, "samples_per_prompt": 8, "minibatch": 4},  # as flow_grpo's
    "adjoint_matching": {"prompts_per_iter": 2, "samples_per_prompt": 2, "minibatch": 4},
    # the preference pairs are sampled in 20 steps: 100 pairs at 50 guided steps would take 20k of the 50k NFE
    "pipeline": {
        "preference_pairs": 100,
        "collect_steps": 20,
        "reward_batch": 32,
        "rl_options": "prompts_per_iter=4,samples_per_prompt=8,minibatch=4,steps_per_call=1",
    },  # as ddpo's above
    "aihf": {
        "preference_pairs": 100,
        "prompts_per_iter": 4,
        "samples_per_prompt": 4,
        "sample_steps": 20,
        "demo_batch": 8,
        "updates_per_iter": 1,
    },
}


def nightly_gpu(smoke: bool = False) -> Suite:
    """The nightly GPU run: every method at scale on its families, PickScore (differentiable) and JPEG
    compressibility (not), 50k NFE, on one GPU through the night. With `smoke`, the same grid on the tiny scale
    world with a few hundred NFE: minutes on a CPU, what the tests run."""
    suite = Suite(
        "nightly-gpu",
        methods=nightly_entries(),
        rewards=("pickscore", "jpeg"),
        seeds=(0,),
        budget=Budget("nfe", 50_000),
        milestones=(0.5, 1.0),
        # one night on one GPU: the first milestone (25k) is three steps of SAS on SD 1.5 (8,000 NFE each)
        budget_tolerance=0.35,
        world="scale",
        eval=EvalConfig(samples_per_prompt=2),
        overrides=NIGHTLY_OVERRIDES,
    )
    if not smoke:
        return suite
    return dataclasses.replace(
        suite,
        name="nightly-gpu-smoke",
        world="scale-tiny",
        budget=Budget("nfe", 240),
        budget_tolerance=0.8,  # as the smoke suite: the plumbing, a step or two per milestone
        eval=EvalConfig(steps=3, samples_per_prompt=2),
        overrides={
            **NIGHTLY_OVERRIDES,
            **small_configs(),  # each method at the small config it declares, as the smoke suite
            "best_of_n": {"max_candidates": 2},
            "pipeline": {
                "preference_pairs": 4,
                "collect_steps": 3,
                "reward_steps": 2,
                "reward_batch": 4,
                "rl_options": "prompts_per_iter=2,samples_per_prompt=2,minibatch=2,sample_steps=3",
            },
        },
    )
