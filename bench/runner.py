"""One run, written once for every method: build -> step until each milestone -> evaluate -> record.

Resume: a run checkpoints its trainer and meter (atomically) at every milestone and every
`checkpoint_every_s` seconds; milestones are recorded in the store in one transaction each. The run
never trains past a milestone before that milestone is recorded, so on restart the only milestone
that can be missing from the store is the one the checkpoint sits at, and it is evaluated again
from the same state (evaluation is deterministic). A killed run loses at most the work since its
last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.evaluate import EvalConfig, evaluate
from bench.loggers import NO_LOGGERS, ExperimentLoggers
from bench.meter import Budget, Meter, MeteredPolicy, MeteredReward
from bench.parallel import ONE_PROCESS, DataParallel
from bench.store import USED_KEYS, RunRecord, Store
from methods import METHODS
from models.io import atomic_torch_save
from models.progress import progress, say
from rewards import REWARDS
from rewards.feedback import AnnotatorConfig, Feedback
from rewards.server import RemoteReward


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers; its hash (with the base model's) is the run's identity."""

    suite: str
    world: str
    method: str
    variant: str
    """The label of the method's config within its suite ('' for the suite's plain config)."""
    model: str
    """The world's generator the method starts from (see worlds.MODELS)."""
    method_config: object
    reward: str
    seed: int
    budget: Budget
    milestones: tuple[float, ...]
    eval: EvalConfig
    source: str = ""
    """A checkpoint of one's own in place of the world's `model` ('' for the world's own); it names the base model,
    so it is part of the run's identity through the base model's hash."""
    reward_server: str = ""
    """The address of a server that scores the reward ('' to score it in this process, rewards/server.py). Not part of
    the run's identity: a served reward is the same reward, with the same version and scores."""

    def config_dict(self) -> dict:
        config = {
            "world": self.world,
            "method": self.method,
            "method_version": METHODS[self.method].version,
            "variant": self.variant,
            "model": self.model,
            "method_config": config_identity(self.method_config),
            "reward": self.reward,
            "seed": self.seed,
            "budget": str(self.budget),
            "milestones": list(self.milestones),
            "eval": self.eval.identity(),
        }
        if METHODS[self.method].learns_from_feedback:
            config["annotator"] = dataclasses.asdict(AnnotatorConfig())
        return config

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode()).hexdigest()

    def run_id(self, base_model_hash: str) -> str:
        identity = hashlib.sha256(f"{self.config_hash()}:{base_model_hash}".encode()).hexdigest()
        name = f"{self.method}-{self.variant}" if self.variant else self.method
        return f"{name}-{self.model}-{self.reward}-s{self.seed}-{identity[:10]}"

    def record(self, base_model_hash: str, reward_version: str) -> RunRecord:
        return RunRecord(
            run_id=self.run_id(base_model_hash),
            suite=self.suite,
            method=self.method,
            method_version=METHODS[self.method].version,
            variant=self.variant,
            model=self.model,
            world=self.world,
            reward=f"{self.reward}",
            seed=self.seed,
            budget_unit=self.budget.unit,
            budget=self.budget.amount,
            config_json=json.dumps({**self.config_dict(), "reward_version": reward_version}, sort_keys=True),
            config_hash=self.config_hash(),
            git_sha=git_sha(),
            base_model_hash=base_model_hash,
        )


def config_identity(config) -> dict:
    """A method config's fields, those at an empty default ("" or ()) and the options declared `added` at their default
    (methods/options.py) left out: adding such an option to a method keeps the identity (and run ids) of its earlier
    runs."""
    left_out = {
        f.name for f in dataclasses.fields(config) if f.metadata.get("added") and getattr(config, f.name) == f.default
    }
    return {k: v for k, v in dataclasses.asdict(config).items() if v not in ("", ()) and k not in left_out}


CODE_PATHS = ("bench", "methods", "models", "rewards", "worlds", "prompts", "pyproject.toml")


@functools.cache
def git_sha() -> str:
    """The commit of the code this process runs: read once, since the tree may change under a long sweep."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout
        # "-dirty" means the code differs from the commit; results being written do not count.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.strip() + ("-dirty" if dirty.strip() else "")


def load_checkpoint(path: Path) -> dict:
    """A run's checkpoint, read as tensors and plain containers only: a file planted where a checkpoint is expected
    cannot run code. One that cannot be read so (truncated, foreign, or holding objects) is moved aside, so that the
    run starts afresh when it is run again, and the error names both files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        aside = path.with_name(f"{path.name}.unreadable")
        path.replace(aside)
        detail = " ".join(str(error).split())[:200]
        raise ValueError(
            f"checkpoint {path} is not readable as tensors ({type(error).__name__}: {detail}); moved to {aside}, "
            "so the run starts afresh when run again"
        ) from error


def _check_finite(values: dict[str, float], where: str) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite values {where}: {bad}")


def execute(
    spec: RunSpec,
    world,
    store: Store,
    checkpoint_dir: Path,
    *,
    checkpoint_every_s: float = 60.0,
    log=say,
    loggers: ExperimentLoggers = NO_LOGGERS,
    parallel: DataParallel = ONE_PROCESS,
) -> str:
    """Runs (or resumes, or skips) one run and returns its final status: done, failed or n/a; reused when the store
    has it done or n/a already (said by the sweep's summary, not here); held when another sweep on the store is
    running it.

    Data-parallel (every process of an `accelerate launch` calls this with its `parallel`): all processes train,
    their compute adds up against the budget, and only the main one evaluates and writes the store; each
    process checkpoints its own random state, so a resumed run continues every process where it stopped. A
    process that fails raises, ending the launch: the others could not go on without it."""
    method = METHODS[spec.method]
    reward_cls = REWARDS[spec.reward]
    served = bool(spec.reward_server)
    raw_reward = (
        RemoteReward.connect(spec.reward_server, expect=spec.reward) if served else reward_cls.from_world(world)
    )
    record = spec.record(world.model_hash(spec.model, spec.source), raw_reward.version)
    status = store.run_status(record.run_id)
    if status in ("done", "n/a"):
        return "reused"
    reason = method.incompatibility(reward_cls, spec.budget.unit)
    if reason is None and served and method.needs_differentiable_reward:
        reason = "needs reward gradients, which a reward served over HTTP does not carry"
    if reason is not None:
        if parallel.main:
            store.record_not_applicable(record, reason)
        log(f"{record.run_id}: n/a ({reason})")
        return "n/a"
    if not parallel.main:
        log, loggers = (lambda *_: None), NO_LOGGERS
    if parallel.world_size > 1 and not method.data_parallel:
        # not recorded: the same command without `accelerate launch` runs it
        log(
            f"{record.run_id}: not run data-parallel ({spec.method} collects its feedback once, on one process); "
            f"run it without accelerate launch"
        )
        return "n/a"

    # the main process claims the run; the others learn whether it did (and read the store only after it has)
    claimed = store.start_run(record) if parallel.main else False
    if not parallel.total([float(claimed)])[0]:
        log(f"{record.run_id}: held by {store.holder(record.run_id)} (another sweep on this store), skipped")
        return "held"
    # the lease stays fresh while the run trains and is given up however it ends; a killed owner's goes stale
    with store.lease(record.run_id) if parallel.main else contextlib.nullcontext():
        suffix = f".rank{parallel.rank}" if parallel.world_size > 1 else ""
        checkpoint = checkpoint_dir / f"{record.run_id}{suffix}.pt"
        run_log = None
        try:
            # everything from here on fails this run alone, with its reason: a bad checkpoint, a trainer that cannot be
            # built, a step or an evaluation that raises
            torch.manual_seed(spec.seed)
            meter = Meter()
            # A method that learns from feedback gets the annotator holding the reward, never the reward itself.
            policy = world.make_policy(spec.model, spec.source)
            signal = (
                Feedback.from_world(world, raw_reward, meter, policy)
                if method.learns_from_feedback
                else MeteredReward(raw_reward, meter)
            )
            trainer = method(
                MeteredPolicy(policy, meter), signal, world.prompts["train"], spec.method_config, spec.seed
            )
            trainer.distribute(parallel)
            if checkpoint.exists():
                state = load_checkpoint(checkpoint)
                trainer.load_state_dict(state["trainer"])
                meter.load_state_dict(state["meter"])
                log(f"{record.run_id}: resumed at {meter.accounts['train'].as_dict()}")

            def save() -> None:
                atomic_torch_save({"trainer": trainer.state_dict(), "meter": meter.state_dict()}, checkpoint)

            def spent() -> float:
                """The budget's fraction spent by all processes together."""
                return parallel.total([getattr(meter.accounts["train"], spec.budget.unit)])[0] / spec.budget.amount

            def used() -> dict[str, float]:
                return dict(zip(USED_KEYS, parallel.total([meter.accounts["train"].as_dict()[k] for k in USED_KEYS])))

            recorded = store.milestones_recorded(record.run_id)
            started = time.monotonic()
            run_log = loggers.open(record)
            for index, fraction in progress(list(enumerate(spec.milestones)), desc=record.run_id):
                if index in recorded:
                    continue
                last_save = time.monotonic()
                while trainer.trains and spent() < fraction:
                    with meter.timed():
                        stats = trainer.step()
                        _check_finite(stats, "in a training step")
                    run_log.log({f"train/{k}": v for k, v in stats.items()}, meter.accounts["train"].nfe)
                    if time.monotonic() - last_save > checkpoint_every_s:
                        save()
                        last_save = time.monotonic()
                if trainer.trains:
                    save()
                milestone_budget = Budget(spec.budget.unit, spec.budget.amount * fraction)
                train_used = used()
                if not parallel.main:
                    parallel.barrier()  # wait while the main process evaluates and records
                    continue
                metrics, samples, generation = evaluate(trainer, world, raw_reward, meter, milestone_budget, spec.eval)
                _check_finite({f"{s}/{m}": v for s, m, v, _ in metrics}, "in evaluation")
                # Training compute for trained methods; for inference-time methods, their whole cost:
                # generating the primary evaluation set.
                milestone_used = train_used if trainer.trains else generation[spec.eval.splits[-1]]
                store.record_milestone(record.run_id, index, milestone_budget.amount, milestone_used, metrics, samples)
                parallel.barrier()
                run_log.log({f"{s}/{m}": v for s, m, v, _ in metrics}, meter.accounts["train"].nfe)
                summary = ", ".join(f"{s.removeprefix('eval_')}/{m}={v:.3f}" for s, m, v, _ in metrics)
                log(f"{record.run_id}: {fraction:.0%} of {spec.budget} ({time.monotonic() - started:.0f}s) {summary}")
        except Exception as error:  # a failing run is recorded with its reason; the sweep goes on
            if parallel.main:
                store.finish_run(record.run_id, "failed", f"{type(error).__name__}: {error}")
            log(f"{record.run_id}: FAILED: {type(error).__name__}: {error}")
            if parallel.world_size > 1:
                # the other processes wait in a collective this one will never join: end them all (the launcher stops
                # the rest when one process fails) rather than leave them waiting for the collectives' timeout
                raise
            return "failed"
        finally:
            if run_log is not None:
                run_log.close()
        if parallel.main:
            store.finish_run(record.run_id, "done")
        checkpoint.unlink(missing_ok=True)
        return "done"
