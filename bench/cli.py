"""`python -m bench`: build worlds, run suites, write leaderboards. This module parses the command line and hands it
to the subcommand's handler (bench/commands.py).

Every method option is a flag `--<method>.<field>` whose help is the field's docstring in the
method's Config, so `--help` documents them all. Everything is validated before any model loads.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import re
import sys
import textwrap
from pathlib import Path

from bench.commands import HANDLERS
from bench.loggers import LOGGERS, check_loggers
from bench.meter import UNITS, Budget
from bench.suites import SUITES, check_names, parse_entry
from bench.throughput.cpu import DIGITS_METHODS
from methods import METHODS
from methods.options import parse_option
from models.progress import MODES as PROGRESS_MODES
from rewards import REWARDS
from worlds import MODELS, WORLDS

SCALE_MODELS = tuple(WORLDS["scale"].models)
CPU_METHODS = tuple(DIGITS_METHODS)


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
        help="run cells in this many parallel local worker processes sharing the store (default 1; `make bench` "
        "passes the machine's core count)",
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
        f"architectures ({', '.join(SCALE_MODELS)}; a GPU benchmark; --size tiny runs anywhere)",
        description="Builds each architecture with random weights (nothing is downloaded), runs one warm-up and "
        "--repeats timed training steps of each method with the nightly suite's batch sizes, and prints a "
        "table; bench/throughput/timing.py documents every column.",
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
        help="real: the published architectures at their configured sides (models/scale/config.py); tiny: toy "
        "models, for tests",
    )
    speed.add_argument(
        "--sample-steps",
        type=_positive_int,
        help="sampler steps of each training step (default: each model's own)",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return HANDLERS[args.command](parser, args)


if __name__ == "__main__":
    sys.exit(main())
