"""`python -m bench`: build worlds, run suites, write leaderboards.

Every method option is a flag `--<method>.<field>` whose help is the field's docstring in the
method's Config, so `--help` documents them all. Everything is validated before any model loads.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import inspect
import math
import os
import re
import sys
import textwrap
from pathlib import Path

from bench.loggers import LOGGERS, check_loggers
from bench.meter import UNITS, Budget
from bench.suites import SUITES, build_suite, check_names, parse_entry, validate
from bench.throughput.cpu import DIGITS_METHODS
from methods import METHODS
from methods.options import parse_option
from models.progress import MODES as PROGRESS_MODES
from models.progress import show_bars
from rewards import REWARDS
from worlds import MODELS, WORLDS, world_entry

SCALE_MODELS = tuple(WORLDS["scale"].models)
CPU_METHODS = tuple(DIGITS_METHODS)

ROOT = Path(__file__).resolve().parents[1]

OUT_HELP = (
    "folder of the tables, plots and report.html (default: the store's folder for a store named store.sqlite, "
    "else a folder beside the store named after it)"
)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (attribute docstrings are not kept at runtime), read from the
    source of its classes once per process: a field redeclared without one keeps its base class's (a shared option
    at another default). A later parser (a forked child that may not read the source files) reuses them."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        definition = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        if not isinstance(definition, ast.ClassDef):
            raise TypeError(f"the source of {klass.__qualname__} is not a class definition")
        body = definition.body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _names(kind: str, valid):
    def parse(text: str) -> tuple[str, ...]:
        try:
            return check_names(kind, [n.strip() for n in text.split(",") if n.strip()], valid)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _entries(text: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    try:
        if not entries:
            raise ValueError(f"no method given; valid: {', '.join(METHODS)}")
        for entry in entries:
            parse_entry(entry)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return entries


def _source(text: str) -> str:
    model, _, source = text.partition("=")
    if model not in SCALE_MODELS or not source:
        raise argparse.ArgumentTypeError(f"expected MODEL=SOURCE with MODEL in {', '.join(SCALE_MODELS)}, got {text!r}")
    return text


def _reward_server(text: str) -> str:
    name, _, url = text.partition("=")
    if name not in REWARDS or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"expected NAME=URL with NAME in {', '.join(REWARDS)} and URL http://HOST:PORT, got {text!r}"
        )
    return text


def _budget(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a fraction > 0 (0.1: 10%), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _option(field: dataclasses.Field):
    """argparse's parser for the method option `field` (methods/options.py): its type and declared range."""

    def parse(text: str):
        try:
            return parse_option(text, field)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line naming what is wrong and what is valid, and which takes no abbreviated
    option (argparse would read `--ddpo.clip 0.1` as `--ddpo.clip_range 0.1`, silently)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        unknown = re.search(r"--([a-z_]+)\.([a-z_]+)", message)
        if message.startswith("unrecognized arguments") and unknown and unknown[1] in METHODS:
            valid = [f.name for f in dataclasses.fields(METHODS[unknown[1]].Config)]
            message += f" ({unknown[1]} options: {', '.join(valid) or 'none'})"
        missing = re.fullmatch(r"argument (--[\w.-]+): expected one argument", message)
        if missing:  # argparse reads a value like -inf or -1e-3 as a flag
            message += f" (a value starting with '-' is written {missing[1]}=VALUE)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _loggers(text: str) -> tuple[str, ...]:
    try:
        return check_loggers(tuple(n.strip() for n in text.split(",") if n.strip()))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--progress",
        choices=list(PROGRESS_MODES),
        default="auto",
        help="progress bars: auto (only when stderr is a terminal), always or never",
    )


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    models = commands.add_parser("models", help="build (or verify) a world's networks")
    models.add_argument("--world", default="digits", choices=list(WORLDS), help="world to build")
    models.add_argument(
        "--ship",
        action="store_true",
        help="make the rebuilt networks the ones the repository ships (weights/<world>/), after a recipe change",
    )
    models.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="processes building independent networks side by side, where a world's networks train on a fixed number "
        "of threads, as the scenes world's do on one (default 2)",
    )
    _add_progress(models)

    run = commands.add_parser(
        "run",
        help="run a suite (resumable) and write its leaderboard",
        description="Runs every method x reward x seed of a suite, skipping finished runs and resuming "
        "interrupted ones, then writes results/<suite>/: leaderboard tables, aggregates, curves and "
        "report.html.",
    )
    run.add_argument(
        "--suite",
        default="default",
        type=_names("suite", SUITES),
        help=f"preset grid ({', '.join(SUITES)}); flags below override its parts",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="the suite's CPU-sized twin (tiny random models, minutes; results/<suite>-smoke/), for the "
        "suites that have one (nightly-gpu)",
    )
    run.add_argument(
        "--method",
        type=_entries,
        help=f"comma-separated METHOD[/VARIANT][@MODEL] (VARIANT: one of the suite's), METHOD in: "
        f"{', '.join(METHODS)}; "
        f"MODEL in: {', '.join(MODELS)} (default: the method's first supported family)",
    )
    run.add_argument(
        "--source",
        action="append",
        type=_source,
        metavar="MODEL=SOURCE",
        help=f"fine-tune this checkpoint (a hub id in the local cache, or a pipeline directory) as a scale "
        f"world's MODEL ({', '.join(SCALE_MODELS)}), e.g. a fine-tuned SD 1.5 as sd15; repeatable",
    )
    run.add_argument(
        "--reward", type=_names("reward", REWARDS), help=f"comma-separated subset of: {', '.join(REWARDS)}"
    )
    run.add_argument("--seeds", type=_positive_int, help="number of seeds (0..N-1)")
    run.add_argument(
        "--budget",
        type=_budget,
        help=f"total budget per run, [UNIT:]AMOUNT with UNIT in {', '.join(UNITS)} (default nfe), e.g. nfe:300k",
    )
    run.add_argument(
        "--budget-tolerance",
        type=_tolerance,
        metavar="FRACTION",
        help="how far past a milestone a run may train, e.g. 0.1 for 10%% (default: the suite's, 10%% in most); a "
        "budget whose first milestone a method's step could pass by more is refused, naming the smallest that fits",
    )
    run.add_argument(
        "--reward-server",
        action="append",
        type=_reward_server,
        metavar="NAME=URL",
        help="score the reward NAME through the server at URL (`python -m bench serve`) instead of in this process: "
        "same name, version and scores; repeatable",
    )
    run.add_argument("--store", type=Path, help="results store (default results/<suite>/store.sqlite)")
    run.add_argument("--out", type=Path, help=OUT_HELP)
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="run cells in this many parallel local worker processes sharing the store (default 1)",
    )
    run.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this machine (default); ray: each cell a Ray task (needs the 'ray' extra)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --backend ray: a running Ray cluster's address, or 'auto' (default: start one here)",
    )
    run.add_argument(
        "--logger",
        type=_loggers,
        default=(),
        help=f"comma-separated experiment loggers ({', '.join(LOGGERS)}; the 'loggers' extra), "
        "writing beside the store in <store>.runs/logs/",
    )
    _add_progress(run)
    for name, method in METHODS.items():
        group = run.add_argument_group(f"{name} options", (method.__doc__ or "").strip().split("\n")[0] or None)
        docs = field_docs(method.Config)
        for f in dataclasses.fields(method.Config):
            group.add_argument(
                f"--{name}.{f.name}",
                dest=f"{name}.{f.name}",
                type=_option(f),
                metavar=str(f.type).upper(),
                help=f"{docs.get(f.name, '')} (default: {f.default}"
                + (f"; valid: {f.metadata['bounds']})" if "bounds" in f.metadata else ")"),
            )

    speed = commands.add_parser(
        "throughput",
        help="images/s, peak memory and MFU of each method's training step on real-size random-weight "
        "SD 1.5, LCM and SD3 architectures (a GPU benchmark; --size tiny runs anywhere)",
        description="Builds each architecture with random weights (nothing is downloaded), runs one warm-up and "
        "--repeats timed training steps of each method with the nightly suite's batch sizes, and prints a "
        "table; bench/throughput.py documents every column.",
    )
    speed.add_argument(
        "--model",
        type=_names("model", SCALE_MODELS),
        default=SCALE_MODELS,
        help=f"comma-separated subset of {', '.join(SCALE_MODELS)} (default: all)",
    )
    speed.add_argument(
        "--method",
        type=_names("method", METHODS),
        help="comma-separated methods (default: every method that trains the model)",
    )
    speed.add_argument(
        "--size",
        choices=("real", "tiny"),
        default="real",
        help="real: the published architectures at 512 px (SD3: 1024 px); tiny: toy models, for tests",
    )
    speed.add_argument(
        "--sample-steps",
        type=_positive_int,
        help="sampler steps of each training step (default: the model's own: 50, 4, 28)",
    )
    speed.add_argument("--repeats", type=_positive_int, default=2, help="timed steps after one warm-up (default 2)")
    speed.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="no gradient checkpointing: more memory, and MFU without recomputed forwards",
    )
    speed.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    cpu = commands.add_parser(
        "cpu-throughput",
        help="the policy-gradient update on one CPU thread: digits NFE/s and GFLOP/s against the thread's matmul, "
        "and with --trl-python DDPO against trl's DDPOTrainer (bench/throughput/cpu.py)",
        description="Times each policy-gradient method's training step on the digits world at one and at its "
        "default steps per network call, and prints a table; bench/throughput/cpu.py documents every figure.",
    )
    cpu.add_argument(
        "--method",
        type=_names("method", CPU_METHODS),
        default=CPU_METHODS,
        help=f"comma-separated subset of {', '.join(CPU_METHODS)} (default: all)",
    )
    cpu.add_argument("--steps", type=_positive_int, default=3, help="timed steps after one warm-up (default 3)")
    cpu.add_argument(
        "--trl-python",
        help="the python of a virtualenv holding trl 0.23.1 (bench/throughput/trl_ddpo.py): also time DDPO against "
        "trl's DDPOTrainer on a tiny Stable Diffusion pipeline",
    )
    cpu.add_argument(
        "--rounds", type=_positive_int, default=3, help="alternating rounds of each side against trl (default 3)"
    )

    serve = commands.add_parser(
        "serve",
        help="serve one of a world's rewards over HTTP (rewards/server.py), for runs that score through it",
        description="Loads the reward as the world offers it and serves it until interrupted; a run scores through "
        "it with --reward-server NAME=URL. Prints the address it serves at.",
    )
    serve.add_argument("--world", default="digits", choices=list(WORLDS), help="the world whose reward to serve")
    serve.add_argument("--reward", required=True, choices=list(REWARDS), help="the reward to serve")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (0: any free one; default 8000)")
    serve.add_argument(
        "--threads", type=_positive_int, default=1, help="torch threads (default 1, as every cell runs: same scores)"
    )

    board = commands.add_parser(
        "leaderboard", help="regenerate results/<suite>/ (tables, plots, report.html) from the store alone"
    )
    board.add_argument("--suite", default="default", type=_names("suite", SUITES), help=f"one of {', '.join(SUITES)}")
    board.add_argument("--smoke", action="store_true", help="the suite's --smoke twin's results")
    board.add_argument("--store", type=Path, help="results store (default results/<suite>/store.sqlite)")
    board.add_argument("--out", type=Path, help=OUT_HELP)
    return parser


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


def suite_from_args(args):
    suite = build_suite(args.suite[0], args.smoke)
    overrides = {m: dict(v) for m, v in suite.overrides.items()}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            method, option = key.split(".", 1)
            overrides.setdefault(method, {})[option] = value
    suite = dataclasses.replace(
        suite,
        methods=_select(suite.methods, args.method) if args.method else suite.methods,
        rewards=args.reward or suite.rewards,
        seeds=tuple(range(args.seeds)) if args.seeds else suite.seeds,
        budget=args.budget or suite.budget,
        budget_tolerance=args.budget_tolerance or suite.budget_tolerance,
        overrides=overrides,
        sources=dict(source.split("=", 1) for source in args.source or ()),
        reward_servers=dict(server.split("=", 1) for server in args.reward_server or ()),
    )
    return validate(suite)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            suite = suite_from_args(args)
        except (ValueError, TypeError) as error:
            parser.error(str(error))
        if args.source and not world_entry(suite.world).takes_sources:
            parser.error(
                f"--source replaces a scale world's checkpoints; suite {suite.name!r} runs in world {suite.world!r}"
            )
        if args.backend == "ray" and args.workers > 1:
            parser.error(
                "--workers is for the local backend; with --backend ray the cluster's CPUs set the parallelism"
            )
        if args.ray_address and args.backend != "ray":
            parser.error("--ray-address needs --backend ray")
        if args.backend == "ray" and importlib.util.find_spec("ray") is None:
            parser.error("--backend ray needs the ray package: pip install -e '.[ray]'")
        if launched_processes() > 1 and (args.workers > 1 or args.backend == "ray"):
            parser.error(
                "under `accelerate launch` every process trains each run together (data-parallel); "
                "drop --workers and --backend ray"
            )
    if args.command == "leaderboard":
        try:
            suite = build_suite(args.suite[0], args.smoke)
        except ValueError as error:
            parser.error(str(error))
    if args.command == "run":
        from rewards.server import RemoteReward

        for name, url in suite.reward_servers.items():
            try:  # a server that is down or serves another reward fails now, not in every run
                RemoteReward.connect(url, expect=name, timeout=30, retries=1)
            except (ConnectionError, ValueError) as error:
                parser.error(str(error))
    if args.command == "serve":
        offered = world_entry(args.world).rewards
        if args.reward not in offered:
            parser.error(f"world {args.world!r} offers no {args.reward!r} reward; valid: {', '.join(offered)}")
        import torch

        from rewards.server import serve
        from worlds import load_world

        torch.set_num_threads(args.threads)
        serve(
            REWARDS[args.reward].from_world(load_world(args.world)),
            args.host,
            args.port,
            lambda line: print(line, flush=True),
        )
        return 0
    if args.command in ("models", "run"):
        show_bars(args.progress)
    # Heavy imports only after the command line is known to be valid.
    from bench import sweep
    from bench.store import Store
    from models.io import check_writable

    if args.command == "models":
        try:
            sweep.build_models(args.world, args.ship, args.workers)
        except ValueError as error:  # rebuilt weights that differ, or a checkpoint missing: say which, and why
            parser.exit(1, f"{parser.prog}: error: {error}\n")
        return 0
    if args.command == "cpu-throughput":
        from bench.throughput import cpu

        if args.trl_python and not Path(args.trl_python).is_file():
            parser.error(f"--trl-python: no python at {args.trl_python}; give the python of trl's virtualenv")
        print(cpu.report(list(args.method), args.steps, args.trl_python, args.rounds))
        return 0
    if args.command == "throughput":
        from bench.throughput import timing

        results = timing.run(
            list(args.model),
            list(args.method) if args.method else None,
            size=args.size,
            sample_steps=args.sample_steps,
            repeats=args.repeats,
            checkpointing=not args.no_checkpointing,
            device=args.device,
        )
        print(timing.table(results))
        return 1 if any(r.failure for r in results) else 0
    store = args.store or ROOT / "results" / suite.name / "store.sqlite"
    out_dir = args.out or sweep.results_dir(store)
    if args.command == "leaderboard" and not store.exists():
        smoke = " --smoke" if args.smoke else ""
        parser.error(f"no results store at {store}: run `python -m bench run --suite {args.suite[0]}{smoke}` first")
    try:
        check_writable(out_dir)
    except OSError as error:
        parser.exit(
            1,
            f"{parser.prog}: error: cannot write the tables into {out_dir} ({error.strerror}); choose a "
            "folder with --out\n",
        )
    if args.command == "leaderboard":
        try:
            sweep.write_tables(store, out_dir, suite.studies)
        except ValueError as error:  # a store that is corrupt or of another schema
            parser.exit(1, f"{parser.prog}: error: {error}\n")
        return 0
    try:  # a store that cannot be written fails now, naming its path, not after the world has loaded
        Store(store).close()
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    if launched_processes() > 1:
        from bench.parallel import start_data_parallel

        return sweep.run_suite(suite, store, loggers=args.logger, parallel=start_data_parallel(), out_dir=out_dir)
    return sweep.run_suite(
        suite,
        store,
        workers=args.workers,
        use_ray=args.backend == "ray",
        ray_address=args.ray_address,
        loggers=args.logger,
        out_dir=out_dir,
    )


def launched_processes() -> int:
    """The number of processes `accelerate launch` (or torchrun) started this one among: 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    sys.exit(main())
