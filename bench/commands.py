"""The handlers of `python -m bench`'s subcommands, one each (bench/cli.py parses the command line and dispatches).
A handler checks what its command needs before any world loads and answers a fault with one line and exit 2
(`parser.error`); the heavy imports come after."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import os
from pathlib import Path

from bench.experiments import Suite, build_suite
from bench.experiments.suite import TUNED, read_tuned, tuned_file, validate
from models.progress import say, show_bars
from worlds import ARTIFACTS, REWARDS, world_entry

ROOT = Path(__file__).resolve().parents[1]


def launched_processes() -> int:
    """The number of processes `accelerate launch` (or torchrun) started this one among: 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _select(entries: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The entries `--method` asks for: a bare method name stands for all of the suite's entries of that
    method (every model and variant), or its plain entry if the suite has none."""
    chosen = []
    for name in wanted:
        if "@" in name or "/" in name:
            chosen.append(name)
        else:
            chosen += [e for e in entries if e.partition("@")[0].partition("/")[0] == name] or [name]
    return tuple(dict.fromkeys(chosen))


def suite_from_args(args) -> Suite:
    """`bench run`'s (or `bench tune`'s) suite: the preset, with the command line's methods, rewards, seeds, budget and
    options over it, and the tuned options beside its store where an entry asks for them (METHOD/tuned)."""
    suite = build_suite(args.suite[0], args.smoke)
    overrides = {m: dict(v) for m, v in suite.overrides.items()}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            method, option = key.split(".", 1)
            overrides.setdefault(method, {})[option] = value
    seeds, budget, tolerance = (getattr(args, name, None) for name in ("seeds", "budget", "budget_tolerance"))
    suite = dataclasses.replace(
        suite,
        methods=_select(suite.methods, args.method) if args.method else suite.methods,
        rewards=args.reward or suite.rewards,
        seeds=tuple(range(seeds)) if seeds else suite.seeds,
        budget=budget or suite.budget,
        budget_tolerance=tolerance or suite.budget_tolerance,
        overrides=overrides,
        sources=dict(source.split("=", 1) for source in getattr(args, "source", None) or ()),
        sharding="" if getattr(args, "sharding", "none") == "none" else args.sharding,
        reward_servers=dict(server.split("=", 1) for server in getattr(args, "reward_server", None) or ()),
    )
    if suite.sharding:  # its own store and tables: a full fine-tune's runs are not its LoRA runs' seeds
        suite = dataclasses.replace(suite, results=f"{suite.results or suite.name}-{suite.sharding}")
    if any(entry.partition("@")[0].endswith(f"/{TUNED}") for entry in suite.methods):
        from bench import sweep

        tuned = read_tuned(tuned_file(sweep.results_dir(_store(args, suite))))
        suite = dataclasses.replace(suite, tuned={**tuned, **suite.tuned})
    return validate(suite, _timings(args, suite) if suite.budget.unit == "wall_s" else None)


def _timings(args, suite: Suite) -> dict[tuple[str, str], float]:
    """Seconds per NFE of each (method, model) with finished runs in the store this command writes, which holds the
    committed runs too once a sweep has used it, else in the committed store."""
    from bench.store import Store

    path = _store(args, suite)
    if not path.is_file():
        path = _committed(suite) / "store.sqlite"
    if not path.is_file():
        return {}
    with Store(path, read_only=True) as store:
        return store.seconds_per_nfe()


def _committed(suite: Suite) -> Path:
    """The folder of a suite's committed results (bench/layers.py): results/<suite>/."""
    return ROOT / "results" / (suite.results or suite.name)


def _store(args, suite: Suite) -> Path:
    """The results store a sweep or a tune writes: --store, or the suite's local layer over its committed results
    (bench/layers.py), artifacts/results/<suite>/, out of the repository's tree."""
    if args.store:
        return args.store
    return ARTIFACTS / "results" / (suite.results or suite.name) / "store.sqlite"


def _layered(args, suite: Suite, store: Path) -> None:
    """Brings the suite's committed runs into its local store (bench/layers.py), unless --store names another."""
    if args.store:
        return
    from bench.layers import sync

    copied = sync(_committed(suite), store.parent)
    if copied:
        say(f"{copied} runs of the committed {_committed(suite).relative_to(ROOT)}/ copied into the local layer")


def _tables_folder(parser: argparse.ArgumentParser, args, store: Path) -> Path:
    """The folder the tables of `store` are written into: --out, or beside the store; one that cannot be written fails
    now, before any work."""
    from bench import sweep
    from models.io import check_writable

    out_dir = args.out or sweep.results_dir(store)
    try:
        check_writable(out_dir)
    except OSError as error:
        parser.exit(
            1,
            f"{parser.prog}: error: cannot write the tables into {out_dir} ({error.strerror}); choose a "
            "folder with --out\n",
        )
    return out_dir


def run(parser: argparse.ArgumentParser, args) -> int:
    try:
        suite = suite_from_args(args)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    if args.source and not world_entry(suite.world).takes_sources:
        parser.error(
            f"--source replaces a scale world's checkpoints; suite {suite.name!r} runs in world {suite.world!r}"
        )
    if suite.sharding and not world_entry(suite.world).shards:
        parser.error(
            f"--sharding {suite.sharding} shards a scale world's full fine-tunes; suite {suite.name!r} runs in world "
            f"{suite.world!r}, whose generators are trained whole on one process"
        )
    if args.backend == "ray" and args.workers > 1:
        parser.error("--workers is for the local backend; with --backend ray the cluster's CPUs set the parallelism")
    if args.ray_address and args.backend != "ray":
        parser.error("--ray-address needs --backend ray")
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        parser.error("--backend ray needs the ray package: pip install -e '.[ray]'")
    if launched_processes() > 1 and (args.workers > 1 or args.backend == "ray"):
        parser.error(
            "under `accelerate launch` every process trains each run together (data-parallel); "
            "drop --workers and --backend ray"
        )
    from rewards.server import RemoteReward

    for name, url in suite.reward_servers.items():
        try:  # a server that is down or serves another reward fails now, not in every run
            RemoteReward.connect(url, expect=name, world=suite.world, timeout=30, retries=1)
        except (ConnectionError, ValueError) as error:
            parser.error(str(error))
    show_bars(args.progress)
    from bench import sweep
    from bench.store import Store

    store = _store(args, suite)
    out_dir = _tables_folder(parser, args, store)
    try:  # a store that cannot be written fails now, naming its path, not after the world has loaded
        Store(store).close()
        _layered(args, suite, store)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    # `--method` asks about some methods: the sweep ends with their rows (as the tables label them), not the best
    asked = tuple(dict.fromkeys(entry.partition("@")[0] for entry in suite.methods)) if args.method else ()
    if launched_processes() > 1:
        from bench.parallel import start_data_parallel

        return sweep.run_suite(
            suite, store, loggers=args.logger, parallel=start_data_parallel(), out_dir=out_dir, asked=asked
        )
    return sweep.run_suite(
        suite,
        store,
        workers=args.workers,
        use_ray=args.backend == "ray",
        ray_address=args.ray_address,
        loggers=args.logger,
        out_dir=out_dir,
        asked=asked,
    )


def _existing_store(parser: argparse.ArgumentParser, args, suite: Suite, smoke: str = "") -> Path:
    """The store a command that reads a suite's results works on: --store, else the committed one, else (or with
    --local) the local layer; refused in one line where there is none."""
    committed = _committed(suite) / "store.sqlite"
    store = args.store or (committed if committed.exists() and not args.local else _store(args, suite))
    if not store.exists():
        parser.error(f"no results store at {store}: run `python -m bench run --suite {args.suite[0]}{smoke}` first")
    return store


def leaderboard(parser: argparse.ArgumentParser, args) -> int:
    try:
        suite = build_suite(args.suite[0], args.smoke)
    except ValueError as error:
        parser.error(str(error))
    from bench import sweep

    store = _existing_store(parser, args, suite, " --smoke" if args.smoke else "")
    out_dir = _tables_folder(parser, args, store)
    try:
        sweep.write_tables(store, out_dir, suite.studies)
    except ValueError as error:  # a store that is corrupt or of another schema
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


def rescore(parser: argparse.ArgumentParser, args) -> int:
    try:
        suite = build_suite(args.suite[0])
    except ValueError as error:
        parser.error(str(error))
    store_path = _existing_store(parser, args, suite)
    from bench.evaluate import rescore as rescore_store
    from bench.store import Store
    from worlds import load_world

    world = load_world(suite.world)
    with Store(store_path) as store:
        added = rescore_store(store, world)
    say(
        f"added {added} metric values read from the samples of {store_path}; rewrite its tables: python -m bench "
        f"leaderboard --suite {args.suite[0]}" + (f" --store {args.store}" if args.store else "")
    )
    return 0


def models(parser: argparse.ArgumentParser, args) -> int:
    show_bars(args.progress)
    from bench import sweep

    try:
        sweep.build_models(args.world, args.ship, args.workers)
    except ValueError as error:  # rebuilt weights that differ, or a checkpoint missing: say which, and why
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


def serve(parser: argparse.ArgumentParser, args) -> int:
    offered = world_entry(args.world).rewards
    if args.reward not in offered:
        parser.error(f"world {args.world!r} offers no {args.reward!r} reward; valid: {', '.join(offered)}")
    import torch

    from rewards.server import serve as serve_reward
    from worlds import load_world

    torch.set_num_threads(args.threads)
    try:
        serve_reward(
            lambda: REWARDS[args.reward].from_world(load_world(args.world)),
            args.world,
            world_entry(args.world).image_shapes,
            args.host,
            args.port,
            lambda line: print(line, flush=True),
        )
    except OSError as error:
        if error.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        parser.exit(
            1,
            f"{parser.prog} serve: error: cannot listen on {args.host}:{args.port} ({error.strerror}); choose "
            "another --port (0: any free one) or --host\n",
        )
    return 0


def throughput(parser: argparse.ArgumentParser, args) -> int:
    from bench.throughput import timing

    results = timing.run(
        list(args.model),
        list(args.method) if args.method else None,
        size=args.size,
        sample_steps=args.sample_steps,
        repeats=args.repeats,
        checkpointing=not args.no_checkpointing,
        device=args.device,
        finetune=args.finetune,
        shards=args.shards,
    )
    print(timing.table(results, shards=args.shards))
    return 1 if any(r.failure for r in results) else 0


def cpu_throughput(parser: argparse.ArgumentParser, args) -> int:
    if args.trl_python and not Path(args.trl_python).is_file():
        parser.error(f"--trl-python: no python at {args.trl_python}; give the python of trl's virtualenv")
    from bench.throughput import cpu

    print(cpu.report(list(args.method), args.steps, args.trl_python, args.rounds))
    return 0


def tune(parser: argparse.ArgumentParser, args) -> int:
    """Tunes each asked-for cell of the suite in turn (bench/tune.py), `--workers` processes side by side on each,
    then writes tuned.json beside the suite's store."""
    from bench import tune as tuning

    try:
        suite = suite_from_args(args)
        cells = tuning.tuning_cells(suite)
        budget_runs = args.budget_runs or suite.tuning_budget
        tuning.check_tune(suite, cells, budget_runs)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    if launched_processes() > 1:
        parser.error("a tune runs its trials one process each; run it without accelerate launch (--workers N instead)")
    from bench import sweep

    store = _store(args, suite)
    try:
        _layered(args, suite, store)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    results = sweep.results_dir(store)
    storage = args.storage or tuning.default_storage(results)
    try:  # a database that cannot be opened fails now, in one line, before any world loads
        tuning.check_storage(storage, tuning.tuning_folder(results))
    except ValueError as error:
        parser.error(str(error))
    show_bars(args.progress)
    return tuning.tune_suite(suite, cells, store, storage, budget_runs, args.workers)


def publish(parser: argparse.ArgumentParser, args) -> int:
    """Copies a suite's local results into its committed ones (bench/layers.py) and rewrites the committed tables;
    refused from a tree whose code differs from its commit, whose results no commit would reproduce."""
    try:
        suite = build_suite(args.suite[0])
    except ValueError as error:
        parser.error(str(error))
    from bench.runner import git_sha

    version = git_sha()
    if version == "unknown" or version.endswith("-dirty"):
        parser.error(
            f"the code differs from its commit ({version}): commit it first, so that published results name the "
            "code that made them"
        )
    local, committed = _store(argparse.Namespace(store=None), suite).parent, _committed(suite)
    if not (local / "store.sqlite").exists():
        parser.error(f"no local results at {local}: run `make bench SUITE={args.suite[0]}` first")
    from bench import layers, sweep

    try:
        copied = layers.publish(local, committed)
        sweep.write_tables(committed / "store.sqlite", committed, suite.studies)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    say(f"published {copied} runs of {local} into {committed.relative_to(ROOT)}/")
    return 0


HANDLERS = {
    "run": run,
    "tune": tune,
    "publish": publish,
    "leaderboard": leaderboard,
    "rescore": rescore,
    "models": models,
    "serve": serve,
    "throughput": throughput,
    "cpu-throughput": cpu_throughput,
}
"""Each subcommand's handler: handler(parser, args) -> exit status."""
