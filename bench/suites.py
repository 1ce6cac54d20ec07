"""Named suites: a grid of methods x rewards x seeds, one budget (evaluated at milestones), and the
method settings. A method entry is `method[/variant][@model]`: `@model` picks the world's generator to
fine-tune (default: the method's first supported family), and `/variant` names one of the suite's
`variants`, a labelled set of options, so one suite can compare configs of the same method. Each preset is a small
function overriding the defaults, so a suite reads as its diff."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field

from bench.budget import Budget
from bench.evaluate import EvalConfig
from bench.names import check_entry, check_names
from bench.studies import STUDIES
from methods import METHODS
from rewards import REWARDS
from worlds import MODEL_FAMILIES, world_entry


@dataclass(frozen=True)
class Suite:
    name: str
    methods: tuple[str, ...] = tuple(METHODS)
    """Entries `method[/variant][@model]`."""
    rewards: tuple[str, ...] = ("digit", "compress")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = Budget("nfe", 300_000)
    milestones: tuple[float, ...] = (0.25, 0.5, 1.0)
    budget_tolerance: float = 0.1
    """How far past a milestone a run may train, as a fraction of it: a run stops at the first step that reaches the
    milestone, so it passes it by less than one step; `validate` refuses a budget whose first milestone a method's
    step could pass by more."""
    world: str = "digits"
    eval: EvalConfig = EvalConfig()
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    """method -> {config field: value}, applied over the method's Config defaults."""
    variants: dict[str, dict[str, object]] = field(default_factory=dict)
    """`method/variant` -> {config field: value}, applied over the overrides for entries naming it."""
    studies: tuple[str, ...] = ()
    """Extra tables written with the leaderboard (bench/studies.py)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Model -> a checkpoint of one's own in its place (`bench run --source MODEL=SOURCE`), in worlds that take one."""
    reward_servers: dict[str, str] = field(default_factory=dict)
    """Reward -> the address of a server that scores it (`bench run --reward-server NAME=URL`, rewards/server.py)."""

    def method_config(self, method: str, variant: str = ""):
        options = {**self.overrides.get(method, {}), **(self.variants[f"{method}/{variant}"] if variant else {})}
        return dataclasses.replace(METHODS[method].Config(), **options)

    def entries(self) -> list[tuple[str, str, str]]:
        """(method, variant, model) of every method entry."""
        return [parse_entry(entry, self.variants, self.world) for entry in self.methods]


def default_model(method: str, world: str = "digits") -> str:
    """The world's first generator of the method's first family."""
    family = METHODS[method].families[0]
    return next(m for m, f in world_entry(world).models.items() if f == family)


def parse_entry(entry: str, variants: dict[str, dict] | None = None, world: str | None = None) -> tuple[str, str, str]:
    """`method[/variant][@model]` -> (method, variant, model), validated against the registries, the suite's
    variants and its world's generators (None: any variant name and any world's model are accepted, for checks
    made before the suite is known)."""
    name, _, model = entry.partition("@")
    method, _, variant = name.partition("/")
    models = MODEL_FAMILIES if world is None else world_entry(world).models
    check_entry(entry, {m: cls.families for m, cls in METHODS.items()}, models)
    if variant and variants is not None and name not in variants:
        valid = [v for v in variants if v.startswith(f"{method}/")]
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(valid) or 'none in this suite'}")
    return method, variant, model or default_model(method, world or "digits")


# The suite's entries: every method on its default model, and the policy-gradient, ranking and direct-gradient methods
# again on the consistency and the flow model, so that ROCM, ORW-CFM-W2, the GRPO family, DiffusionNFT and Adjoint
# Matching are compared on their own bases.
# (sft and pipeline, aihf's baselines, are compared with it in the feedback suite.)
DEFAULT_METHODS = (
    "base",
    "best_of_n",
    "raft",
    "ddpo",
    "sas",
    "aihf",
    "dance_grpo@diffusion",
    "dpo",
    "draft",
    "alignprop",
    "refl",
    "base@consistency",
    "best_of_n@consistency",
    "raft@consistency",
    "ddpo@consistency",
    "rocm@consistency",
    "draft@consistency",
    "alignprop@consistency",
    "refl@consistency",
    "base@flow",
    "best_of_n@flow",
    "raft@flow",
    "ddpo@flow",
    "orw_cfm_w2@flow",
    "flow_grpo@flow",
    "mix_grpo@flow",
    "dance_grpo@flow",
    "dpo@flow",
    "draft@flow",
    "alignprop@flow",
    "refl@flow",
    "diffusion_nft@flow",
    "adjoint_matching@flow",
)


def default() -> Suite:
    """Every method on both rewards of the digits world, 3 seeds, 300k NFE (milestones at 75k, 150k)."""
    return Suite("default", methods=DEFAULT_METHODS)


def smoke() -> Suite:
    """A minutes-long pass over every method, model and reward on the tiny world, for tests and quick checks: each
    method at the small config it declares (Trainer.small_config)."""
    return Suite(
        "smoke",
        methods=DEFAULT_METHODS,
        seeds=(0, 1),
        budget=Budget("nfe", 400),
        milestones=(0.5, 1.0),
        # a pass checks the plumbing in minutes: its milestones are a few steps each (sas's is 90 of its 200 NFE)
        budget_tolerance=0.5,
        world="digits-tiny",
        eval=EvalConfig(steps=4, samples_per_prompt=2),
        overrides={name: dict(method.small_config) for name, method in METHODS.items() if method.small_config},
    )


# The default suite's entries on the compositional world, which has a diffusion and a flow model (no consistency model:
# docs/guide.md says why), and there the methods the default suite runs only on its consistency model (rocm) or leaves
# to the feedback suite (sft, pipeline), so that every method is on its leaderboard.
SCENES_METHODS = (
    *(
        f"{entry.partition('@')[0]}@scene-{entry.partition('@')[2] or 'diffusion'}"
        for entry in DEFAULT_METHODS
        if not entry.endswith("@consistency")
    ),
    "rocm@scene-diffusion",
    "sft@scene-diffusion",
    "pipeline@scene-diffusion",
)


def scenes(smoke: bool = False) -> Suite:
    """The default suite's methods on the compositional world (GenEval and OCR in miniature): both rewards, 3 seeds,
    300k NFE. `smoke`: its tiny twin, at the smoke suite's size."""
    suite = Suite("scenes", methods=SCENES_METHODS, rewards=("geneval", "ocr"), world="scenes", studies=("families",))
    if smoke:
        sized = SUITES["smoke"]()
        return dataclasses.replace(
            sized,
            name="scenes",
            methods=suite.methods,
            rewards=suite.rewards,
            world="scenes-tiny",
            studies=suite.studies,
        )
    return suite


def rocm_efficiency() -> Suite:
    """ROCM against DDPO on the consistency model (and DDPO on the diffusion model) on `digit`, evaluated
    at ten milestones, for the reward queries each needs to reach a reward (bench/studies.py)."""
    return Suite(
        "rocm-efficiency",
        methods=("base@consistency", "rocm@consistency", "ddpo@consistency", "ddpo"),
        rewards=("digit",),
        milestones=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0),
        # the first milestones sit one or two DDPO steps in on purpose (5,120 NFE of the first 6,000 on the diffusion
        # model): the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.9,
        studies=("efficiency",),
    )


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
    """ROCM with every divergence at two strengths and without one, on `digit` (bench/studies.py)."""
    variants = {"rocm/none": {"divergence": "none"}}
    for divergence, betas in REGULARIZATION_BETAS.items():
        for beta in betas:
            variants[f"rocm/{divergence}-{beta:g}"] = {"divergence": divergence, "beta": beta}
    return Suite(
        "rocm-regularization",
        methods=("base@consistency", *(f"{v}@consistency" for v in variants)),
        rewards=("digit",),
        variants=variants,
        studies=("regularization",),
    )


ORW_ALPHAS = (0.0, 0.1, 1.0, 10.0)


def orw_alpha() -> Suite:
    """ORW-CFM-W2 without the W2 bound and at three strengths, on both rewards (bench/studies.py)."""
    variants = {f"orw_cfm_w2/alpha-{alpha:g}": {"alpha": alpha} for alpha in ORW_ALPHAS}
    return Suite(
        "orw-alpha", methods=("base@flow", *(f"{v}@flow" for v in variants)), variants=variants, studies=("alpha",)
    )


DISCRETIZATION_STEPS = (10, 40)


def sas_discretization() -> Suite:
    """SAS and DDPO trained with the diffusion model's 20 sampler steps, evaluated with 20 and also with 10 and
    40 steps, on `digit`: how much of the reward gain each keeps under another discretization. SAS also
    trains on the fixed grid, to tell its objective from its random grids."""
    return Suite(
        "sas-discretization",
        methods=("base", "sas", "sas/fixed-grid", "ddpo"),
        rewards=("digit",),
        variants={"sas/fixed-grid": {"grid": "fixed"}},
        eval=EvalConfig(also_steps=DISCRETIZATION_STEPS),
        studies=("discretization",),
    )


PREFERENCE_BUDGETS = (100, 300, 1000)


def feedback() -> Suite:
    """Learning from the annotator of the `gold` reward: AIHF, SFT on its demonstrations, and the classic pipeline
    (a Bradley-Terry reward model, then DDPO on it) at three preference budgets, on the diffusion model."""
    variants = {
        f"{method}/pairs-{pairs}": {"preference_pairs": pairs}
        for method in ("aihf", "pipeline")
        for pairs in PREFERENCE_BUDGETS
    }
    return Suite(
        "feedback",
        methods=("base", "sft", *variants),
        rewards=("gold",),
        variants=variants,
        studies=("preference_budget",),
    )


def grpo_family() -> Suite:
    """The GRPO family and Diffusion-DPO side by side with DDPO on the flow model, on `compress` (where the methods
    move: the `digit` reward saturates), evaluated at ten milestones and also at Flow-GRPO's 10 training steps,
    with Flow-GRPO also trained at the default steps, without its KL, in its Fast mode (the SDE on a random window of
    2 of the first 5 steps) and with GRPO-Guard instead of the KL, MixGRPO also as MixGRPO-Flash (4 ODE steps after
    the window), and DPO also offline (bench/studies.py)."""
    variants = {
        "flow_grpo/train-20": {"sample_steps": None},
        "flow_grpo/no-kl": {"kl_coef": 0.0},
        "flow_grpo/fast": {"sde_window": 2},
        # the regulated log-ratio is about 4x narrower than the plain one here (its std is the step's, ~0.2): the
        # clip range shrinks with it, so a similar share of steps is clipped at the start
        "flow_grpo/guard": {"guard": True, "kl_coef": 0.0, "clip_range": 0.05},
        "mix_grpo/flash": {"flash_steps": 4},
        "dpo/offline": {"pairing": "offline"},
    }
    methods = (
        "base",
        "ddpo",
        "flow_grpo",
        "flow_grpo/train-20",
        "flow_grpo/no-kl",
        "flow_grpo/fast",
        "flow_grpo/guard",
        "mix_grpo",
        "mix_grpo/flash",
        "dance_grpo",
        "dpo",
    )
    return Suite(
        "grpo-family",
        methods=tuple(f"{m}@flow" for m in (*methods, "dpo/offline")),
        rewards=("compress",),
        variants=variants,
        milestones=tuple(round(0.1 * k, 1) for k in range(1, 11)),
        # ten milestones draw the early curve: the first (30k) is five steps of Flow-GRPO at 20 steps (6,144 NFE each);
        # the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.25,
        eval=EvalConfig(also_steps=(10,)),
        studies=("grpo",),
    )


def direct_vs_pg() -> Suite:
    """The direct-gradient and likelihood-free families against the policy gradients on the flow model, at ten
    milestones: DRaFT-1 and full backpropagation (`draft/full`, K = T), DRaFT-LV, AlignProp, ReFL, Adjoint Matching
    and DiffusionNFT against DDPO and Flow-GRPO, with ROCM on its consistency model beside DRaFT-1 there
    (bench/studies.py: direct). The reward is the differentiable `gold` (the judge's log-probability of the
    prompted digit plus bold strokes): `digit` leaves no room, as the base models' log-probability of the prompted
    digit is already about -0.03."""
    variants: dict[str, dict[str, object]] = {"draft/full": {"grad_steps": 20}, "draft/lv": {"lv_samples": 2}}
    flow = (
        "base",
        "ddpo",
        "flow_grpo",
        "diffusion_nft",
        "draft",
        "draft/full",
        "draft/lv",
        "alignprop",
        "refl",
        "adjoint_matching",
    )
    return Suite(
        "direct-vs-pg",
        methods=(*(f"{m}@flow" for m in flow), "base@consistency", "rocm@consistency", "draft@consistency"),
        rewards=("gold",),
        variants=variants,
        milestones=tuple(round(0.1 * k, 1) for k in range(1, 11)),
        # the first milestone (30k) is a few iterations of the costliest methods (AlignProp's ~1.6k NFE, DDPO's
        # ~3k); the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.25,
        studies=("direct",),
    )


# Every method at scale: SD 1.5 for the policy-gradient, ranking, inference-time, feedback and direct-gradient
# methods (AlignProp checkpointed through the chain, as its paper), the LCM for ROCM (whose backward through 50 SD
# steps with its divergence would not fit a night), SD3.5-medium (the field's flow base; SD3-medium stays in the world
# as `sd3`) for ORW-CFM-W2, the GRPO family, DRaFT, DiffusionNFT and Adjoint Matching, with DDPO on all three as the
# common reference; and Flow-GRPO, the field's flow method, on SD3-medium and FLUX.1-dev, so every family runs nightly.
NIGHTLY_METHODS = (
    "base@sd15",
    "best_of_n@sd15",
    "raft@sd15",
    "ddpo@sd15",
    "sas@sd15",
    "sft@sd15",
    "pipeline@sd15",
    "aihf@sd15",
    "base@lcm",
    "rocm@lcm",
    "ddpo@lcm",
    "dance_grpo@sd15",
    "dpo@sd15",
    "draft@sd15",
    "alignprop@sd15",
    "refl@sd15",
    "base@sd35",
    "orw_cfm_w2@sd35",
    "ddpo@sd35",
    "flow_grpo@sd35",
    "mix_grpo@sd35",
    "dance_grpo@sd35",
    "dpo@sd35",
    "draft@sd35",
    "diffusion_nft@sd35",
    "adjoint_matching@sd35",
    "base@sd3",
    "flow_grpo@sd3",
    "base@flux",
    "flow_grpo@flux",
)
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
        methods=NIGHTLY_METHODS,
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
            # each method at the small config it declares (Trainer.small_config), as the smoke suite
            **{name: dict(method.small_config) for name, method in METHODS.items() if method.small_config},
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


SUITES = {
    "default": default,
    "smoke": smoke,
    "rocm-efficiency": rocm_efficiency,
    "rocm-regularization": rocm_regularization,
    "orw-alpha": orw_alpha,
    "sas-discretization": sas_discretization,
    "feedback": feedback,
    "grpo-family": grpo_family,
    "direct-vs-pg": direct_vs_pg,
    "scenes": scenes,
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


def check_budget(suite: Suite) -> None:
    """Refuses a budget whose first milestone one of the suite's training methods could pass by more than the suite's
    tolerance, naming the smallest budget that keeps every milestone within it. The step that reaches a milestone
    passes it by less than its own cost: the first step's (with its one-off work) when that step alone reaches the
    milestone, a later step's otherwise (Trainer.step_usage, .iteration_usage). Later milestones are larger, so
    the first is the one at risk."""
    unit, fraction, tolerance = suite.budget.unit, suite.milestones[0], suite.budget_tolerance
    first = suite.budget.amount * fraction
    world = world_entry(suite.world)
    too_small = {}  # entry -> (what a step could pass the first milestone by, the smallest budget that fits)
    for method, variant, model in suite.entries():
        if not METHODS[method].trains:
            continue
        config, generator = suite.method_config(method, variant), world.generator_class(model)
        first_step = METHODS[method].step_usage(config, generator).get(unit, 0.0)
        later_step = METHODS[method].iteration_usage(config, generator).get(unit, 0.0)
        past = max(first_step - first, later_step)
        if past > tolerance * first:
            # the smallest first milestone m with max(first_step - m, later_step) <= tolerance * m, as a budget
            smallest = max(later_step / tolerance, first_step / (1 + tolerance)) / fraction
            too_small[f"{method}/{variant}@{model}" if variant else f"{method}@{model}"] = (past, smallest)
    if too_small:
        entry, (past, smallest) = max(too_small.items(), key=lambda item: item[1][1])
        others = f" (and {len(too_small) - 1} more of its entries)" if len(too_small) > 1 else ""
        raise ValueError(
            f"budget {suite.budget} is too small for {entry}{others}: a step costs up to {past:g} {unit}, more than "
            f"{tolerance:.0%} of the first milestone ({first:g}, at {fraction:g} of the budget); the smallest budget "
            f"that keeps every milestone within {tolerance:.0%} is {unit}:{_round_up(smallest)} (or allow more: "
            "--budget-tolerance)"
        )


def _round_up(amount: float) -> str:
    """`amount` rounded up to two significant digits, written as a budget: 492,800 -> 500k."""
    scale = 10 ** max(math.floor(math.log10(amount)) - 1, 0)
    rounded = math.ceil(amount / scale) * scale
    if rounded >= 1_000_000:
        return f"{rounded / 1_000_000:g}M"
    return f"{rounded / 1_000:g}k" if rounded >= 1_000 else f"{rounded:g}"


def validate(suite: Suite) -> Suite:
    """Fails fast, before any model loads, on anything a run would only discover later."""
    if not suite.methods:
        raise ValueError("a suite needs at least one method")
    entries = suite.entries()
    check_names("reward", suite.rewards, REWARDS)
    offered = world_entry(suite.world).rewards
    missing = [r for r in suite.rewards if r not in offered]
    if missing:
        raise ValueError(
            f"world {suite.world!r} offers no {', '.join(map(repr, missing))} reward; valid: {', '.join(offered)}"
        )
    named = {**suite.overrides, **{name.partition("/")[0]: values for name, values in suite.variants.items()}}
    for method, values in named.items():
        check_names("method", [method], METHODS)
        fields = {f.name for f in dataclasses.fields(METHODS[method].Config)}
        check_names(f"{method} option", values, sorted(fields))
    for method, variant, _ in entries:
        suite.method_config(method, variant)
    if (
        not suite.milestones
        or any(not 0 < m <= 1 for m in suite.milestones)
        or list(suite.milestones) != sorted(set(suite.milestones))
    ):
        raise ValueError(f"milestones must be increasing fractions in (0, 1], got {suite.milestones}")
    served = [name for name in suite.reward_servers if name not in suite.rewards]
    if served:
        raise ValueError(
            f"--reward-server names {', '.join(map(repr, served))}, which the suite does not run; its rewards: "
            f"{', '.join(suite.rewards)}"
        )
    check_budget(suite)
    for study in suite.studies:
        check_names("study", [study], STUDIES)
    if suite.eval.samples_per_prompt < 2:
        raise ValueError(
            "eval samples_per_prompt must be >= 2 (diversity compares images of a prompt), "
            f"got {suite.eval.samples_per_prompt}"
        )
    runnable = [
        (m, r)
        for m, _, _ in entries
        for r in suite.rewards
        if METHODS[m].incompatibility(REWARDS[r], suite.budget.unit) is None
    ]
    if not runnable:
        reasons = {
            f"{m}+{r}": METHODS[m].incompatibility(REWARDS[r], suite.budget.unit)
            for m, _, _ in entries
            for r in suite.rewards
        }
        raise ValueError(f"no method/reward pair of this suite can run: {reasons}")
    return suite
