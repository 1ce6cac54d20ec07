"""Tuning: every trained method searched with the same budget before it is compared (`python -m bench tune`).

A tune searches one (method, model, reward) cell of a suite over the options its method declares searchable
(Trainer.search_space), as an Optuna study:
- trials are sampled by TPE, seeded per trial (the study's name and the trial's number), so a killed tune that is
  resumed asks for exactly the trials an uninterrupted one would;
- the first trial is the method's default options (pruned, like any trial, where it trails at a milestone);
- each trial is an ordinary run of the suite's budget and milestones in the tune's own results store
  (`tuning/store.sqlite` beside the suite's store): same run ids, reused when a trial repeats, resumed from its
  checkpoint when a tune was killed during it;
- a successive-halving pruner reads the trial's milestones and stops the trials that trail (a stopped run stays
  'running' in the store, with the milestones it reached);
- the objective is the world's headline metric on the tuning split (models/prompts.py: `eval_tune`, train prompts
  eval_seen does not hold), with the trials' seed and evaluation noise apart from every reporting seed's: a tune
  never evaluates `eval_unseen`, the split the leaderboards report;
- the tune spends the suite's tuning budget (Suite.tuning_budget run budgets, pruned trials included) and stops at
  the first milestone that spends it, so it passes it by at most one milestone's share of one run per worker.

Optuna keeps the studies in a database: by default the SQLite file `tuning/studies.sqlite` beside the trials, so
that a killed tune resumes where it stopped; `--storage URL` names another (PostgreSQL or MySQL, for workers on several
machines: Optuna's distributed mode, with the trials' store on a folder they share). The chosen options are written
to `tuned.json` beside the suite's store, which the suite's `METHOD/tuned@MODEL` entries read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.experiments.suite import Suite, tuned_file, write_tuned
from bench.owners import owner_id, owner_is_dead
from bench.reward_spec import reward_class
from methods import METHODS
from methods.options import Choice, Interval
from models.prompts import TUNE_SPLIT
from worlds import world_entry

if TYPE_CHECKING:
    from bench.runner import RunSpec

TRIAL = "trial"
"""The variant of a trial's runs."""
TRIAL_SEED = 1000
"""The seed of every trial's run (the same for all, so that trials differ by their options alone) and the offset of
the tuning split's evaluation noise: apart from the reporting seeds 0..n-1 and their noise."""
STARTUP_TRIALS = 4
"""Trials TPE samples at random (after the default) before it models the scores."""
REPEATS_TO_STOP = 10
"""Trials in a row that ask for options already run (a converged search of a small space): the tune stops."""


@dataclass(frozen=True)
class Cell:
    """One (method, model, reward) cell of a suite: what a tune searches."""

    method: str
    model: str
    reward: str

    @property
    def key(self) -> str:
        return f"{self.method}@{self.model}/{self.reward}"


def tuning_folder(results: Path) -> Path:
    """Where a suite's tunes keep their trials' store and their studies: beside the suite's store."""
    return results / "tuning"


def default_storage(results: Path) -> str:
    return f"sqlite:///{tuning_folder(results) / 'studies.sqlite'}"


def objective(suite: Suite) -> tuple[str, bool]:
    """The metric a tune maximizes (or minimizes), read on the tuning split: the world's headline metric."""
    entry = world_entry(suite.world)
    return entry.headline_metric, entry.metrics[entry.headline_metric]


def tuning_cells(suite: Suite) -> list[Cell]:
    """The cells a suite tunes: each of its trained methods' plain entries, by reward, where the method can run the
    reward; a method with nothing to tune (best_of_n, base) is left out."""
    cells = [
        Cell(method, model, reward)
        for reward in suite.rewards
        for method, variant, model in suite.entries()
        if not variant
        and METHODS[method].trains
        and METHODS[method].search_space
        and METHODS[method].incompatibility(reward_class(reward), suite.budget.unit) is None
    ]
    return list(dict.fromkeys(cells))


def check_tune(suite: Suite, cells: list[Cell], budget_runs: float) -> None:
    """Refuses, in one line and before anything loads, what a tune could not do: no cell to tune (the methods asked
    for have nothing to tune, or cannot run the rewards asked for), a tuning budget smaller than one trial."""
    if not cells:
        reasons = {
            f"{method}/{reward}": METHODS[method].incompatibility(reward_class(reward), suite.budget.unit)
            or "nothing to tune: it does not train, or declares no search_space"
            for reward in suite.rewards
            for method, _, _ in suite.entries()
        }
        said = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise ValueError(f"suite {suite.name!r} has no cell to tune among those asked for ({said})")
    if budget_runs < 1:
        raise ValueError(
            f"a tuning budget of {budget_runs:g} run budgets is smaller than one trial; give at least 1 "
            f"(the suite's is {suite.tuning_budget:g})"
        )


def trial_spec(suite: Suite, cell: Cell, options: Mapping[str, object]) -> RunSpec:
    """The run of one trial: the cell's default config with the trial's options, the trials' seed, evaluated on the
    tuning split alone, with its own noise."""
    from bench.runner import RunSpec

    config = dataclasses.replace(suite.method_config(cell.method), **options)
    return RunSpec(
        suite=suite.name,
        world=suite.world,
        method=cell.method,
        variant=TRIAL,
        model=cell.model,
        method_config=config,
        reward=cell.reward,
        seed=TRIAL_SEED,
        budget=suite.budget,
        milestones=suite.milestones,
        eval=dataclasses.replace(suite.eval, splits=(TUNE_SPLIT,), also_steps=(), seed=suite.eval.seed + TRIAL_SEED),
        source=suite.sources.get(cell.model, ""),
    )


def distributions(method: str) -> dict:
    """Optuna's distribution of each searched option (Trainer.search_space)."""
    import optuna

    config = METHODS[method].Config
    kinds = {f.name: str(f.type).removesuffix(" | None") for f in dataclasses.fields(config)}
    found = {}
    for name, search in METHODS[method].search_space.items():
        if isinstance(search, Choice):
            found[name] = optuna.distributions.CategoricalDistribution(search.values)
        elif kinds[name] == "int":
            found[name] = optuna.distributions.IntDistribution(int(search.low), int(search.high), log=search.log)
        else:
            assert isinstance(search, Interval)
            found[name] = optuna.distributions.FloatDistribution(search.low, search.high, log=search.log)
    return found


def study_name(suite: Suite, cell: Cell) -> str:
    return f"{suite.name}:{cell.key}"


def open_study(suite: Suite, cell: Cell, storage: str, number: int = 0):
    """The cell's study, created if new (with the default options as its first trial), with a TPE sampler seeded for
    its trial `number` and the successive-halving pruner on the suite's milestones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(suite, cell)
    seed = int.from_bytes(hashlib.sha256(f"{name}:{number}".encode()).digest()[:4], "big")
    _, higher_is_better = objective(suite)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        direction="maximize" if higher_is_better else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS),
        # rungs at the milestones: a trial goes on past one only when it is in the best half there
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=step(suite.milestones[0]), reduction_factor=2),
    )
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_options(suite, cell), skip_if_exists=True)
    return study


def default_options(suite: Suite, cell: Cell) -> dict[str, object]:
    """The searched options at the cell's defaults (an option whose default is None at the model's own value)."""
    method, config = METHODS[cell.method], suite.method_config(cell.method)
    family = world_entry(suite.world).models[cell.model]
    values = {name: getattr(config, name) for name in method.search_space}
    return {name: method.model_defaults[name][family] if value is None else value for name, value in values.items()}


def step(fraction: float) -> int:
    """A milestone as the pruner's step: its percentage of the run budget."""
    return round(100 * fraction)


def last_use(store, run_id: str, metric: str, unit: str) -> float:
    """What a trial's run used of `unit` by its last recorded milestone (0 before its first)."""
    readings = store.readings(run_id, TUNE_SPLIT, metric, unit)
    return readings[max(readings)][1] if readings else 0.0


class Tune:
    """One worker's tune of one cell: asks, runs and tells trials until the tuning budget is spent. Several workers
    (processes or machines) share the study and the trials' store; a trial whose worker died is taken over by the
    next worker that looks, from its checkpoint."""

    def __init__(self, suite: Suite, cell: Cell, store_path: Path, storage: str, budget_runs: float, log):
        from bench.store import Store

        self.suite, self.cell, self.store_path, self.storage, self.log = suite, cell, store_path, storage, log
        self.budget = budget_runs * suite.budget.amount
        self.metric, _ = objective(suite)
        self.store = Store(store_path)

    def run(self) -> None:
        from bench.cell import world_of

        world = world_of(self.suite.world)
        self.base_hash = world.model_hash(self.cell.model, self.suite.sources.get(self.cell.model, ""))
        repeats = 0
        while self.spent() < self.budget and repeats < REPEATS_TO_STOP:
            trial, spec = self.next_trial()
            fresh = spec.run_id(self.base_hash) not in self.runs_of_others(trial.number)
            repeats = 0 if fresh else repeats + 1
            self.run_trial(trial, spec)
        if repeats >= REPEATS_TO_STOP:
            self.log(f"{self.cell.key}: {REPEATS_TO_STOP} trials in a row asked for options already run; stopped")

    def study(self, number: int = 0):
        return open_study(self.suite, self.cell, self.storage, number)

    def trials(self):
        return self.study().get_trials(deepcopy=False)

    def runs_of_others(self, number: int) -> set[str]:
        return {t.user_attrs["run_id"] for t in self.trials() if t.number != number and "run_id" in t.user_attrs}

    def spent(self) -> float:
        """The budget's unit spent by the study's trials: each distinct run's use at its last recorded milestone."""
        run_ids = {t.user_attrs["run_id"] for t in self.trials() if "run_id" in t.user_attrs}
        return sum(last_use(self.store, run_id, self.metric, self.suite.budget.unit) for run_id in run_ids)

    def next_trial(self):
        """A trial to run: one left running by a worker that died, else a new one. A running trial is orphaned when
        its run's lease is free and either its run was started (a worker holding it would hold the lease) or the
        worker that asked for it is dead: a trial another worker has just asked for, its run not started yet, is
        left to that worker."""
        import optuna

        for frozen in self.study().get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            run_id, asker = frozen.user_attrs.get("run_id"), frozen.user_attrs.get("owner", "")
            started = run_id is not None and self.store.run_status(run_id) is not None
            if run_id is not None and self.store.holder(run_id) is None and (started or owner_is_dead(asker)):
                # Optuna has no public call that continues a running trial; its Trial is made from the trial's id
                trial = optuna.trial.Trial(self.study(frozen.number), frozen._trial_id)
                self.log(f"{self.cell.key}: trial {frozen.number} resumed")
                return trial, trial_spec(self.suite, self.cell, frozen.params)
        study = self.study(len(self.trials()))
        trial = study.ask(distributions(self.cell.method))
        spec = trial_spec(self.suite, self.cell, trial.params)
        trial.set_user_attr("run_id", spec.run_id(self.base_hash))
        trial.set_user_attr("owner", owner_id())
        return trial, spec

    def run_trial(self, trial, spec: RunSpec) -> None:
        import optuna

        from bench.cell import run_cell

        study = trial.study
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        reported = set(frozen.intermediate_values)
        last = len(spec.milestones) - 1

        def keep_going(run_id: str, index: int) -> bool:
            value = self.store.readings(run_id, TUNE_SPLIT, self.metric, spec.budget.unit)[index][0]
            at = step(spec.milestones[index])
            if at not in reported:
                trial.report(value, at)
                reported.add(at)
            if index == last:
                return True
            if self.spent() >= self.budget:
                trial.set_user_attr("stopped", "the tuning budget is spent")
                return False
            return not trial.should_prune()

        status = run_cell(spec, self.store_path, keep_going=keep_going)
        if status == "held":  # another worker took it over
            return
        readings = self.store.readings(trial.user_attrs["run_id"], TUNE_SPLIT, self.metric, spec.budget.unit)
        if status in ("done", "reused") and last in readings:
            for index, (value, _) in sorted(readings.items()):
                if step(spec.milestones[index]) not in reported:
                    trial.report(value, step(spec.milestones[index]))
            study.tell(trial, readings[last][0])
            state = f"{self.metric} {readings[last][0]:.3f}"
        elif status == "stopped":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state = f"pruned at {max(readings, default=0) + 1} of {last + 1} milestones"
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state = status
        self.log(f"{self.cell.key}: trial {trial.number} {dict(trial.params)}: {state} (spent {self.spent():g})")


def tune_cell(suite: Suite, cell: Cell, store_path: Path, storage: str, budget_runs: float, log) -> None:
    tune = Tune(suite, cell, store_path, storage, budget_runs, log)
    try:
        tune.run()
    finally:
        tune.store.close()


# -- the tuned configs ----------------------------------------------------------------------------------------------


def cell_summary(suite: Suite, cell: Cell, storage: str, store_path: Path, budget_runs: float) -> dict | None:
    """What tuned.json holds of a cell: its chosen options (the best completed trial's), its score, the spend, and
    every trial; None when it has no completed trial yet."""
    import optuna

    from bench.store import Store

    try:
        study = optuna.load_study(study_name=study_name(suite, cell), storage=storage)
    except KeyError:
        return None
    metric, higher_is_better = objective(suite)
    unit = suite.budget.unit
    trials, spent = [], 0.0
    with Store(store_path, read_only=True) as store:
        for trial in study.get_trials(deepcopy=False):
            used = last_use(store, trial.user_attrs.get("run_id", ""), metric, unit)
            spent += used
            trials.append(
                {
                    "number": trial.number,
                    "state": trial.state.name.lower(),
                    "score": None if trial.value is None else round(trial.value, 4),
                    unit: used,
                    "options": dict(trial.params),
                }
            )
    complete = [t for t in trials if t["state"] == "complete"]
    if not complete:
        return None
    best = (max if higher_is_better else min)(complete, key=lambda t: t["score"])
    return {
        "options": best["options"],
        "score": best["score"],
        "objective": f"{TUNE_SPLIT}/{metric}",
        "budget": f"{unit}:{budget_runs * suite.budget.amount:g}",
        "spent": spent,
        "trials": trials,
    }


def update_tuned(suite: Suite, cells: list[Cell], storage: str, results: Path, budget_runs: float) -> dict[str, dict]:
    """Rewrites tuned.json with the given cells' summaries over those it holds already; returns the new ones."""
    path = tuned_file(results)
    held = json.loads(path.read_text()) if path.is_file() else {}
    fresh = {}
    for cell in cells:
        summary = cell_summary(suite, cell, storage, tuning_folder(results) / "store.sqlite", budget_runs)
        if summary is not None:
            fresh[cell.key] = summary
    write_tuned(path, {**held, **fresh})
    return fresh


def check_storage(storage: str, folder: Path) -> None:
    """Opens the studies' database (creating its folder for a SQLite file), or says in one line why it cannot."""
    import optuna

    if storage.startswith("sqlite:///"):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        optuna.storages.RDBStorage(storage)
    except Exception as error:  # a bad URL, a missing driver, a server that does not answer: all said the same way
        detail = " ".join(str(error).split())[:200]
        raise ValueError(f"cannot open the tuning storage {storage!r} ({type(error).__name__}: {detail})") from None


def tune_suite(
    suite: Suite, cells: list[Cell], store_path: Path, storage: str, budget_runs: float, workers: int
) -> int:
    """Tunes each cell in turn, with `workers` local processes side by side on it, then writes tuned.json; 1 when a
    cell ends with no completed trial."""
    from bench.sweep import interrupts_held, local_workers, results_dir
    from models.progress import say
    from worlds import ensure_world

    results = results_dir(store_path)
    trials_store = tuning_folder(results) / "store.sqlite"
    ensure_world(suite.world)
    missing = []
    for cell in cells:
        open_study(suite, cell, storage)  # made, with its default trial, before any worker asks for a trial
        say(f"tuning {cell.key}: {budget_runs:g} x {suite.budget} on {TUNE_SPLIT}, {workers} worker(s)")
        if workers > 1:
            with local_workers(workers) as pool:
                with interrupts_held():
                    jobs = [
                        pool.submit(tune_cell, suite, cell, trials_store, storage, budget_runs, say)
                        for _ in range(workers)
                    ]
                for job in jobs:
                    job.result()
        else:
            tune_cell(suite, cell, trials_store, storage, budget_runs, say)
        summary = update_tuned(suite, [cell], storage, results, budget_runs).get(cell.key)
        if summary is None:
            missing.append(cell.key)
            continue
        say(
            f"{cell.key}: chose {summary['options']} ({summary['objective']} {summary['score']:.3f}, "
            f"{len(summary['trials'])} trials, spent {summary['spent']:g} of {summary['budget']})"
        )
    say(f"wrote {tuned_file(results)}")
    if missing:
        say(f"no completed trial (a larger tuning budget would have one) for: {', '.join(missing)}")
    return 1 if missing else 0
