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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.budget import Budget
from bench.diagnostics import Trace, first_pass_warning
from bench.evaluate import EvalConfig, evaluate
from bench.loggers import NO_LOGGERS, ExperimentLoggers, RunLogger
from bench.meter import Meter
from bench.parallel import ONE_PROCESS, DataParallel, local_shards, shard_policy, sharded
from bench.reward_spec import reward_class
from bench.store import Store
from bench.store_schema import USED_KEYS, RunRecord
from bench.trainers import build_trainer
from methods import METHODS
from models.io import atomic_torch_save
from models.progress import progress, say
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
    sharding: str = ""
    """'fsdp2': a full fine-tune of the generator, sharded over the processes (bench/parallel.py); '' its adapters (or
    the embedded worlds' whole networks), unsharded. Part of the run's identity when set: it changes what trains."""
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
        if self.sharding:
            config["sharding"] = self.sharding
        if METHODS[self.method].learns_from_feedback:
            config["annotator"] = dataclasses.asdict(AnnotatorConfig())
        return config

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode()).hexdigest()

    def run_id(self, base_model_hash: str) -> str:
        identity = hashlib.sha256(f"{self.config_hash()}:{base_model_hash}".encode()).hexdigest()
        name = f"{self.method}-{self.variant}" if self.variant else self.method
        # a combined reward's weights read WEIGHTxREWARD in the id, which names checkpoint and log files
        return f"{name}-{self.model}-{self.reward.replace('*', 'x')}-s{self.seed}-{identity[:10]}"

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
    keep_going: Callable[[str, int], bool] | None = None,
) -> str:
    """Runs (or resumes, or skips) one run and returns its final status: done, failed or n/a; reused when the store
    has it done or n/a already (said by the sweep's summary, not here); held when another sweep on the store is
    running it; stopped when `keep_going(run_id, milestone index)`, asked once each milestone is in the store (those
    recorded before a resume included), answers False: the run stays 'running' in the store, unleased, with the
    milestones it has, and its checkpoint is deleted (a tune's pruned trial, bench/tune.py).

    Data-parallel (every process of an `accelerate launch` calls this with its `parallel`): all processes train,
    their compute adds up against the budget, and only the main one evaluates and writes the store; each
    process checkpoints its own random state, so a resumed run continues every process where it stopped. A
    process that fails raises, ending the launch: the others could not go on without it. A reward server that stops
    answering fails the cells that need it, one line each (they are not recorded: their run ids name the served
    reward's version), and the sweep goes on."""
    try:
        run = Run(spec, world, store, checkpoint_dir, checkpoint_every_s, log, loggers, parallel, keep_going)
    except ConnectionError as error:
        entry = f"{spec.method}/{spec.variant}" if spec.variant else spec.method
        log(f"{entry}@{spec.model} {spec.reward} seed {spec.seed}: FAILED: {error}")
        return "failed"
    return run.execute()


class Run:
    """One run in this process, from claim to record. What differs between the processes of a data-parallel launch
    is written here and nowhere else: the main process alone claims, writes the store, evaluates and speaks; the
    others learn its claim through a collective and wait at a barrier while it evaluates; budgets and usage add up
    over all processes (`parallel.total`); each process keeps its own checkpoint."""

    def __init__(
        self,
        spec: RunSpec,
        world,
        store: Store,
        checkpoint_dir: Path,
        checkpoint_every_s: float,
        log,
        loggers: ExperimentLoggers,
        parallel: DataParallel,
        keep_going: Callable[[str, int], bool] | None = None,
    ):
        self.spec, self.world, self.store, self.parallel = spec, world, store, parallel
        self.keep_going = keep_going
        self.main = parallel.main
        self.log = log if self.main else (lambda *_: None)
        self.loggers = loggers if self.main else NO_LOGGERS
        self.checkpoint_every_s = checkpoint_every_s
        self.method = METHODS[spec.method]
        self.served = bool(spec.reward_server)
        self.raw_reward = (
            RemoteReward.connect(spec.reward_server, expect=spec.reward, world=spec.world)
            if self.served
            else reward_class(spec.reward).from_world(world)
        )
        self.record = spec.record(world.model_hash(spec.model, spec.source), self.raw_reward.version)
        suffix = f".rank{parallel.rank}" if parallel.world_size > 1 else ""
        self.checkpoint = checkpoint_dir / f"{self.record.run_id}{suffix}.pt"
        self.previous = self.checkpoint.with_name(f"{self.checkpoint.name}.previous")
        """The process's checkpoint before its last save, kept while it has several: a kill that lands between two
        processes' saves leaves each the save before, from which they all resume (`_resume_state`)."""
        self.mesh = None
        """The device mesh of a sharded run (bench/parallel.py: shard_policy); None unsharded."""

    def execute(self) -> str:
        run_id = self.record.run_id
        if self.store.run_status(run_id) in ("done", "n/a"):
            recorded = self.store.reward_version(run_id)
            if recorded not in (None, self.raw_reward.version):
                # another reward under the same name (another world's, or a server of other code): its results are
                # not this run's, and the store holds one run per id
                self.log(
                    f"{run_id}: FAILED: recorded with {self.spec.reward} version {recorded}, not this reward's "
                    f"{self.raw_reward.version}: use another --store for it"
                )
                return "failed"
            return "reused"
        reason = self._incompatibility()
        if reason is not None:
            if self.main:
                self.store.record_not_applicable(self.record, reason)
            self.log(f"{run_id}: n/a ({reason})")
            return "n/a"
        if self.parallel.world_size > 1 and not self.method.data_parallel:
            # not recorded: the same command without `accelerate launch` runs it
            self.log(
                f"{run_id}: not run data-parallel ({self.spec.method} collects its feedback once, on one process); "
                f"run it without accelerate launch"
            )
            return "n/a"
        if not self._claim():
            self.log(f"{run_id}: held by {self.store.holder(run_id)} (another sweep on this store), skipped")
            return "held"
        # the lease stays fresh while the run trains and is given up however it ends; a killed owner's goes stale
        with self.store.lease(run_id) if self.main else contextlib.nullcontext():
            try:
                # everything from here on fails this run alone, with its reason: a bad checkpoint, a trainer that
                # cannot be built, a step or an evaluation that raises
                self._build()
                finished = self._train()
            except Exception as error:  # a failing run is recorded with its reason; the sweep goes on
                if self.main:
                    self.store.finish_run(run_id, "failed", f"{type(error).__name__}: {error}")
                self.log(f"{run_id}: FAILED: {type(error).__name__}: {error}")
                if self.parallel.world_size > 1:
                    # the other processes wait in a collective this one will never join: end them all (the launcher
                    # stops the rest when one process fails) rather than leave them waiting for the collectives'
                    # timeout
                    raise
                return "failed"
        if self.main and finished:
            self.store.finish_run(run_id, "done")
        self.checkpoint.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
        return "done" if finished else "stopped"

    def _incompatibility(self) -> str | None:
        reason = self.method.incompatibility(reward_class(self.spec.reward), self.spec.budget.unit)
        if reason is None and self.served and self.method.needs_differentiable_reward:
            reason = "needs reward gradients, which a reward served over HTTP does not carry"
        return reason

    def _claim(self) -> bool:
        # the main process claims the run; the others learn whether it did (and read the store only after it has)
        claimed = self.store.start_run(self.record) if self.main else False
        return bool(self.parallel.total([float(claimed)])[0])

    def _build(self) -> None:
        spec = self.spec
        torch.manual_seed(spec.seed)
        self.meter = Meter()
        self.trace, self.warned, self.segment, self.saves = Trace(), False, 0, 0
        if spec.sharding:
            policy = self.world.make_policy(spec.model, spec.source, full_finetune=True)
            self.mesh = shard_policy(policy, self.parallel)  # before the trainer's optimizer takes the parameters
        else:
            policy = self.world.make_policy(spec.model, spec.source)
        self.trainer = build_trainer(
            spec.method,
            policy,
            self.raw_reward,
            self.world.prompts["train"],
            spec.method_config,
            spec.seed,
            self.meter,
            lambda meter: Feedback.from_world(self.world, self.raw_reward, meter, policy),
        )
        self.trainer.distribute(self.parallel)
        state = self._resume_state()
        if state is not None:
            self.saves = state.get("saves", 1)  # a checkpoint of an older version counted none
            self.trainer.load_state_dict(
                state["trainer"] if self.mesh is None else sharded(state["trainer"], self.mesh)
            )
            self.meter.load_state_dict(state["meter"])
            # the steps towards a milestone not yet recorded (one recorded after the save took them with it); a
            # checkpoint of an older version kept none
            if state.get("segment") not in self.store.milestones_recorded(self.record.run_id):
                self.trace.load_state_dict(state.get("trace", []))
            self.log(f"{self.record.run_id}: resumed at {self.meter.accounts['train'].as_dict()}")

    def _resume_state(self) -> dict | None:
        """The newest checkpoint every process has (None: start afresh). Every process saves after the same steps
        (`_save_due`), but a kill can land between two processes' saves; each keeps its save before the last, so they
        all hold the older of the two."""
        states = {}
        for path in (self.checkpoint, self.previous) if self.parallel.world_size > 1 else (self.checkpoint,):
            if path.exists():
                state = load_checkpoint(path)
                states[state.get("saves", 1)] = state
        agreed = int(self.parallel.gather(torch.tensor([max(states, default=0)])).min())
        if agreed and agreed not in states:
            raise ValueError(
                f"the processes' checkpoints of {self.record.run_id} hold no common save (this one: {sorted(states)}, "
                f"all: {agreed}); delete {self.checkpoint.parent}/{self.record.run_id}.* to start the run afresh"
            )
        return states.get(agreed)

    def _save_due(self, last_save: float) -> bool:
        """Whether to checkpoint after this step: the main process's clock decides for all, so that the processes'
        checkpoints are of the same step."""
        due = self.main and time.monotonic() - last_save > self.checkpoint_every_s
        return self.parallel.total([float(due)])[0] > 0

    def _save(self) -> None:
        self.saves += 1
        trainer = self.trainer.state_dict()
        state = {
            # a sharded run's parameters and moments as this process's shards: tensors, as load_checkpoint reads
            "trainer": trainer if self.mesh is None else local_shards(trainer),
            "meter": self.meter.state_dict(),
            "trace": self.trace.state_dict(),
            "segment": self.segment,  # the milestone the trace's steps lead to
            "saves": self.saves,
        }
        if self.parallel.world_size > 1 and self.checkpoint.exists():
            self.checkpoint.replace(self.previous)
        atomic_torch_save(state, self.checkpoint)

    def _spent(self) -> float:
        """The budget's fraction spent by all processes together."""
        budget = self.spec.budget
        return self.parallel.total([getattr(self.meter.accounts["train"], budget.unit)])[0] / budget.amount

    def _used(self) -> dict[str, float]:
        account = self.meter.accounts["train"].as_dict()
        return dict(zip(USED_KEYS, self.parallel.total([account[k] for k in USED_KEYS])))

    def _train(self) -> bool:
        """Trains through every milestone (True), or until `keep_going` says stop (False)."""
        recorded = self.store.milestones_recorded(self.record.run_id)
        self.started = time.monotonic()
        run_log = self.loggers.open(self.record)
        try:
            for index, fraction in progress(list(enumerate(self.spec.milestones)), desc=self.record.run_id):
                if index not in recorded:
                    self.segment = index
                    self._train_until(fraction, run_log)
                    self._milestone(index, fraction, run_log)
                if self.keep_going is not None and not self.keep_going(self.record.run_id, index):
                    self.log(f"{self.record.run_id}: stopped at {fraction:.0%} of {self.spec.budget}")
                    return False
        finally:
            run_log.close()
        return True

    def _train_until(self, fraction: float, run_log: RunLogger) -> None:
        trainer, meter = self.trainer, self.meter
        last_save = time.monotonic()
        while trainer.trains and self._spent() < fraction:
            with meter.timed():
                stats = trainer.step()
                _check_finite(stats, "in a training step")
            self._note_step(stats)
            run_log.log({f"train/{k}": v for k, v in stats.items()}, meter.accounts["train"].nfe)
            if self._save_due(last_save):
                self._save()
                last_save = time.monotonic()
        if trainer.trains:
            self._save()

    def _note_step(self, stats: dict[str, float]) -> None:
        """Adds the step to the trace the next milestone records, and says once per run if its first pass strayed."""
        norms = list(self.trainer.gradient_norms)
        self.trainer.gradient_norms.clear()
        nfe = self.parallel.total([self.meter.accounts["train"].nfe])[0]  # every process's, as the milestones count
        self.trace.add(stats, nfe, self.meter.take_scores(), norms)
        warning = first_pass_warning(stats)
        if warning and not self.warned:
            self.log(
                f"{self.record.run_id}: warning: {warning} (step {len(self.trace.steps)} since the last milestone)"
            )
            self.warned = True

    def _milestone(self, index: int, fraction: float, run_log: RunLogger) -> None:
        spec, meter = self.spec, self.meter
        budget = Budget(spec.budget.unit, spec.budget.amount * fraction)
        train_used = self._used()
        trace = self.trace.columns()
        self.trace.clear()
        if not self.main and self.mesh is None:
            self.parallel.barrier()  # wait while the main process evaluates and records
            return
        # a sharded network's every forward pass takes all the processes: they all generate, the main one records
        metrics, samples, generation = evaluate(self.trainer, self.world, self.raw_reward, meter, budget, spec.eval)
        if not self.main:
            self.parallel.barrier()
            return
        _check_finite({f"{s}/{m}": v for s, m, v, _ in metrics}, "in evaluation")
        # Training compute for trained methods; for inference-time methods, their whole cost: generating the primary
        # evaluation set.
        used = train_used if self.trainer.trains else generation[spec.eval.splits[-1]]
        self.store.record_milestone(self.record.run_id, index, budget.amount, used, metrics, samples, trace)
        self.parallel.barrier()
        run_log.log({f"{s}/{m}": v for s, m, v, _ in metrics}, meter.accounts["train"].nfe)
        summary = ", ".join(f"{s.removeprefix('eval_')}/{m}={v:.3f}" for s, m, v, _ in metrics)
        elapsed = time.monotonic() - self.started
        self.log(f"{self.record.run_id}: {fraction:.0%} of {spec.budget} ({elapsed:.0f}s) {summary}")
