"""`python -m bench`: build worlds, run suites, write leaderboards. This module parses the command line and hands it
to the subcommand's handler (bench/commands.py).

Every method option is a flag `--<method>.<field>` whose help is the field's docstring in the
method's Config, so `--help` documents them all. Everything is validated before any model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import arguments
from bench.arguments import Parser
from bench.budget import UNITS
from bench.catalog import Catalog, Method, catalog
from bench.names import SHARDINGS
from models.progress import MODES as PROGRESS_MODES

OUT_HELP = (
    "folder of the tables, plots and report.html (default: the store's folder for a store named store.sqlite, "
    "else a folder beside the store named after it)"
)


def _add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--progress",
        choices=list(PROGRESS_MODES),
        default="auto",
        help="progress bars: auto (only when stderr is a terminal), always or never",
    )


def _add_method_options(parser: argparse.ArgumentParser, name: str, method: Method, shown: bool) -> None:
    """`--NAME.OPTION` for each of a method's options, parsed to its type within its declared range; `shown`: listed
    in the parser's help, as a group (`run --help` lists none, `run --help-method NAME` one method's)."""
    group = parser.add_argument_group(f"{name} options", method.summary or None) if shown else parser
    for option in method.options:
        group.add_argument(
            f"--{name}.{option.name}",
            dest=f"{name}.{option.name}",
            type=arguments.option(option),
            metavar=option.annotation.upper(),
            help=f"{option.doc} (default: {option.default}"
            + (f"; valid: {option.bounds}" if option.bounds is not None and option.annotation != "str" else "")
            + (f"; tuned over {option.search})" if option.search else ")")
            if shown
            else argparse.SUPPRESS,
        )


class _MethodHelp(argparse.Action):
    """`run --help-method METHOD`: one method's options (`all`: every method's), so that `run --help` fits a screen."""

    def __init__(self, option_strings, dest, known: Catalog, **kwargs):
        self.known = known
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        name = str(values)
        if name != "all" and name not in self.known.methods:
            parser.error(
                f"argument --help-method: unknown method {name!r}; valid: all, {', '.join(self.known.methods)}"
            )
        shown = argparse.ArgumentParser(
            prog=f"{parser.prog} --METHOD.OPTION VALUE", usage=argparse.SUPPRESS, add_help=False
        )
        for method_name, method in self.known.methods.items():
            if name in ("all", method_name):
                _add_method_options(shown, method_name, method, shown=True)
        shown.print_help()
        parser.exit()


def build_parser(known: Catalog | None = None) -> Parser:
    """The command line's parser over the catalog `known` (None: bench/catalog.py's, from its cache where fresh)."""
    known = known or catalog()[0]
    options = {name: [o.name for o in method.options] for name, method in known.methods.items()}
    parser = Parser(prog="python -m bench", description=__doc__.split("\n\n")[0], method_options=options)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    models = commands.add_parser("models", help="build (or verify) a world's networks")
    models.add_argument("--world", default="digits", choices=list(known.worlds), help="world to build")
    models.add_argument(
        "--ship",
        action="store_true",
        help="make the rebuilt networks the ones the repository ships (weights/<world>/), after a recipe change",
    )
    models.add_argument(
        "--workers",
        type=arguments.positive_int,
        default=2,
        help="processes building independent networks side by side, where a world's networks train on a fixed number "
        "of threads, as the scenes world's do on one (default 2)",
    )
    _add_progress(models)

    run = commands.add_parser(
        "run",
        help="run a suite (resumable) and write its leaderboard",
        description="Runs every method x reward x seed of a suite, skipping finished runs and resuming "
        "interrupted ones, then writes the suite's local layer, artifacts/results/<suite>/ (it starts with the "
        "committed runs of results/<suite>/; make publish copies its runs there): leaderboard tables, aggregates, "
        "curves and report.html.",
    )
    run.add_argument(
        "--suite",
        default="default",
        type=arguments.names("suite", known.suites),
        help=f"preset grid ({', '.join(known.suites)}); flags below override its parts",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="the suite's CPU-sized twin (tiny random models, minutes; artifacts/results/<suite>-smoke/), for the "
        f"suites that have one ({', '.join(known.sized_suites)})",
    )
    run.add_argument(
        "--method",
        type=arguments.entries(known),
        help=f"comma-separated METHOD[/VARIANT][@MODEL] (VARIANT: one of the suite's), METHOD in: "
        f"{', '.join(known.methods)}; "
        f"MODEL in: {', '.join(known.models)} (default: the method's first supported family)",
    )
    run.add_argument(
        "--source",
        action="append",
        type=arguments.source(known),
        metavar="MODEL=SOURCE",
        help=f"fine-tune this checkpoint (a hub id in the local cache, or a pipeline directory) as a scale "
        f"world's MODEL ({', '.join(known.scale_models)}), e.g. a fine-tuned SD 1.5 as sd15; repeatable",
    )
    run.add_argument(
        "--sharding",
        choices=SHARDINGS,
        default="none",
        help="fsdp2: every weight of a scale world's denoiser trains, sharded over the processes (default none: LoRA)",
    )
    run.add_argument(
        "--reward",
        type=arguments.rewards(known),
        help=f"comma-separated rewards, each one of {', '.join(known.rewards)} or several with weights joined by + "
        "(their weighted sum, e.g. digit+0.5*compress)",
    )
    run.add_argument("--seeds", type=arguments.seed_count, help="number of seeds (0..N-1, at most 1000)")
    run.add_argument(
        "--budget",
        type=arguments.budget,
        help=f"total budget per run, [UNIT:]AMOUNT with UNIT in {', '.join(UNITS)} (default nfe), e.g. nfe:300k",
    )
    run.add_argument(
        "--budget-tolerance",
        type=arguments.tolerance,
        metavar="FRACTION",
        help="how far past a milestone a run may train, e.g. 0.1 for 10%% (default: the suite's, 10%% in most); a "
        "budget whose first milestone a method's step could pass by more is refused, naming the smallest that fits",
    )
    run.add_argument(
        "--reward-server",
        action="append",
        type=arguments.reward_server(known),
        metavar="NAME=URL",
        help="score the reward NAME through the server at URL (`python -m bench serve`) instead of in this process: "
        "same name, version and scores; repeatable",
    )
    run.add_argument(
        "--store",
        type=arguments.store_file,
        help="results store (default: the local layer artifacts/results/<suite>/store.sqlite, which starts with the "
        "committed runs of results/<suite>/; make publish copies its runs there)",
    )
    run.add_argument("--out", type=Path, help=OUT_HELP)
    run.add_argument(
        "--workers",
        type=arguments.positive_int,
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
        type=arguments.loggers,
        default=(),
        help=f"comma-separated experiment loggers ({', '.join(known.loggers)}; the 'loggers' extra), "
        "writing beside the store in <store>.runs/logs/",
    )
    _add_progress(run)
    run.add_argument(
        "--help-method",
        action=_MethodHelp,
        known=known,
        metavar="METHOD",
        help="list a method's options, --METHOD.OPTION VALUE, with their defaults, ranges and meaning, and exit "
        "(all: every method's)",
    )
    for name, method in known.methods.items():
        _add_method_options(run, name, method, shown=False)

    tune = commands.add_parser(
        "tune",
        help="search each trained method's options with the same budget per cell (Optuna; resumable), then write "
        "tuned.json beside the suite's store for its METHOD/tuned@MODEL entries",
        description="Tunes every (method, model, reward) cell asked for: TPE trials, each an ordinary run of the "
        "suite's budget scored on the tuning split (never on eval_unseen), pruned by successive halving at the "
        "milestones, until the cell's tuning budget is spent; a killed tune resumes where it stopped. bench/tune.py "
        "documents it.",
    )
    tune.add_argument(
        "--suite", default="scenes", type=arguments.names("suite", known.suites), help="the suite whose cells to tune"
    )
    tune.add_argument("--smoke", action="store_true", help="the suite's --smoke twin (tiny world, minutes)")
    tune.add_argument(
        "--method",
        type=arguments.entries(known),
        help="comma-separated METHOD[@MODEL] (default: every trained method of the suite)",
    )
    tune.add_argument("--reward", type=arguments.rewards(known), help="comma-separated subset of the suite's rewards")
    tune.add_argument(
        "--budget-runs",
        type=arguments.positive_number,
        metavar="RUNS",
        help="the tuning budget of each cell in run budgets, pruned trials included (default: the suite's, 8)",
    )
    tune.add_argument(
        "--workers",
        type=arguments.positive_int,
        default=1,
        help="local processes running trials side by side (default 1)",
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna's database of the studies (default: sqlite:///<results>/tuning/studies.sqlite); a PostgreSQL or "
        "MySQL URL lets workers on several machines share a tune, with --store on a folder they share",
    )
    tune.add_argument(
        "--store",
        type=arguments.store_file,
        help="the suite's results store (default: its local layer, artifacts/results/<suite>/)",
    )
    _add_progress(tune)

    speed = commands.add_parser(
        "throughput",
        help="images/s, peak memory and MFU of each method's training step on real-size random-weight "
        f"architectures ({', '.join(known.scale_models)}; a GPU benchmark; --size tiny runs anywhere)",
        description="Builds each architecture with random weights (nothing is downloaded), runs one warm-up and "
        "--repeats timed training steps of each method with the nightly suite's batch sizes, and prints a "
        "table; bench/throughput/timing.py documents every column.",
    )
    speed.add_argument(
        "--model",
        type=arguments.names("model", known.scale_models),
        default=known.scale_models,
        help=f"comma-separated subset of {', '.join(known.scale_models)} (default: all)",
    )
    speed.add_argument(
        "--method",
        type=arguments.names("method", known.methods),
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
        type=arguments.positive_int,
        help="sampler steps of each training step (default: each model's own)",
    )
    speed.add_argument(
        "--repeats", type=arguments.positive_int, default=2, help="timed steps after one warm-up (default 2)"
    )
    speed.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="no gradient checkpointing: more memory, and MFU without recomputed forwards",
    )
    speed.add_argument(
        "--finetune",
        choices=("lora", "full"),
        default="lora",
        help="lora: the adapters train (default); full: every weight of the denoiser, as `bench run --sharding fsdp2`",
    )
    speed.add_argument(
        "--shards",
        type=arguments.positive_int,
        default=1,
        help="with --finetune full: also the peak memory per GPU of FSDP2 over this many GPUs, computed (default 1)",
    )
    speed.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    cpu = commands.add_parser(
        "cpu-throughput",
        help="training steps on one CPU thread: the embedded worlds' leaderboard entries' NFE/s and GFLOP/s against "
        "the thread's matmul, and with --trl-python DDPO against trl's DDPOTrainer (bench/throughput/cpu.py)",
        description="Times the training step of each entry of the digits and scenes leaderboards (a policy-gradient "
        "method's at one and at its default steps per network call), and prints a table; bench/throughput/cpu.py "
        "documents every figure.",
    )
    cpu.add_argument(
        "--method",
        type=arguments.names("method", known.cpu_methods),
        default=known.cpu_methods,
        help=f"comma-separated subset of {', '.join(known.cpu_methods)} (default: all)",
    )
    cpu.add_argument(
        "--steps", type=arguments.positive_int, default=3, help="timed steps after one warm-up (default 3)"
    )
    cpu.add_argument(
        "--trl-python",
        help="the python of a virtualenv holding trl 0.23.1 (bench/throughput/trl_ddpo.py): also time DDPO against "
        "trl's DDPOTrainer on a tiny Stable Diffusion pipeline",
    )
    cpu.add_argument(
        "--rounds",
        type=arguments.positive_int,
        default=3,
        help="alternating rounds of each side against trl (default 3)",
    )

    serve = commands.add_parser(
        "serve",
        help="serve one of a world's rewards over HTTP (rewards/server.py), for runs that score through it",
        description="Loads the reward as the world offers it and serves it until interrupted; a run scores through "
        "it with --reward-server NAME=URL. Prints the address it serves at.",
    )
    serve.add_argument("--world", default="digits", choices=list(known.worlds), help="the world whose reward to serve")
    serve.add_argument("--reward", required=True, choices=list(known.rewards), help="the reward to serve")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument(
        "--port", type=arguments.port, default=8000, help="the port to listen on (0: any free one; default 8000)"
    )
    serve.add_argument(
        "--threads",
        type=arguments.positive_int,
        default=1,
        help="torch threads (default 1, as every cell runs: same scores)",
    )

    board = commands.add_parser(
        "leaderboard", help="regenerate results/<suite>/ (tables, plots, report.html) from the store alone"
    )
    board.add_argument(
        "--suite",
        default="default",
        type=arguments.names("suite", known.suites),
        help=f"one of {', '.join(known.suites)}",
    )
    board.add_argument("--smoke", action="store_true", help="the suite's --smoke twin's results")
    board.add_argument(
        "--local",
        action="store_true",
        help="the local layer's tables (artifacts/results/<suite>/, what your sweeps computed over the committed runs)",
    )
    board.add_argument(
        "--store",
        type=arguments.store_file,
        help="results store (default: the committed results/<suite>/store.sqlite, else the local)",
    )
    board.add_argument("--out", type=Path, help=OUT_HELP)
    rescored = commands.add_parser(
        "rescore",
        help="add to a store's finished runs the metrics their world reads from stored samples that they lack",
        description="A metric a world reads from its evaluation samples (worlds/base.World.sample_metrics), added "
        "after runs were recorded, is read from the samples those runs keep, as a new run's evaluation reads its own "
        "(bench/evaluate.py: rescore). Rewrite the tables after it (leaderboard).",
    )
    rescored.add_argument(
        "--suite",
        default="default",
        type=arguments.names("suite", known.suites),
        help=f"one of {', '.join(known.suites)} (its world, and its store unless --store)",
    )
    rescored.add_argument(
        "--local", action="store_true", help="the local layer's store (default: the committed results/<suite>/)"
    )
    rescored.add_argument("--store", type=arguments.store_file, help="a results store of the suite's world")
    published = commands.add_parser(
        "publish",
        help="copy a suite's local results (artifacts/results/<suite>/) into its committed ones and rewrite their "
        "tables, from a clean tree",
        description="Committed results (results/<suite>/) are a read-only reference; sweeps and tunes write a local "
        "layer over them. This copies the local runs that finished at a clean code version, and a tune's trials, "
        "studies and tuned options, into the committed layer, then rewrites its tables (bench/layers.py).",
    )
    published.add_argument(
        "--suite",
        default="default",
        type=arguments.names("suite", known.suites),
        help=f"one of {', '.join(known.suites)}",
    )
    for command in commands.choices.values():
        command.add_argument(
            "--debug",
            action="store_true",
            help=f"show an unexpected error's traceback instead of its one line (or set {DEBUG}=1)",
        )
    return parser


DEBUG = "RLHF_BENCH_DEBUG"
"""The environment variable that, set to 1, shows tracebacks as --debug does (for CI and the tests)."""


def main(argv: list[str] | None = None) -> int:
    """Bad input is answered by the parser in one line, exit 2; what files or the environment cause (a corrupt store,
    a busy port, a full disk, a tampered checkpoint) in one line naming the error, exit 1, and Ctrl-C in one line,
    exit 130: tracebacks only with --debug."""
    parser = build_parser()
    args = parser.parse_args(argv)  # with the catalog's cache fresh, bad input has been answered by now, torch-free
    from bench.commands import HANDLERS

    command = f"{parser.prog} {args.command}"
    debug = args.debug or os.environ.get(DEBUG) == "1"
    try:
        return HANDLERS[args.command](parser, args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{command}: interrupted (finished runs are kept; the same command resumes the rest)", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or "no message"
        print(f"{command}: error: {type(error).__name__}: {message} (--debug shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
