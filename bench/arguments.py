"""The command line's argument types (bench/cli.py builds the parser from them): each reads one argument's text,
checked against the catalog (bench/catalog.py) or its declared range, and answers a bad one in one line naming what
is valid; and the parser whose errors are such lines."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from bench.budget import Budget
from bench.catalog import Catalog, Option
from bench.loggers import check_loggers
from bench.names import canonical_reward, check_names
from methods.options import LARGEST_INT, parse_option


def names(kind: str, valid):
    def parse(text: str) -> tuple[str, ...]:
        try:
            return check_names(kind, [n.strip() for n in text.split(",") if n.strip()], valid)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def rewards(known: Catalog):
    """Comma-separated reward specs: a reward's name, or several with weights joined by + (bench/names.py:
    reward_terms), each spelt the one way run ids name it."""

    def parse(text: str) -> tuple[str, ...]:
        try:
            specs = tuple(canonical_reward(spec.strip(), known.rewards) for spec in text.split(",") if spec.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if not specs:
            raise argparse.ArgumentTypeError(f"no reward given; valid: {', '.join(known.rewards)}")
        return specs

    return parse


def entries(known: Catalog):
    def parse(text: str) -> tuple[str, ...]:
        entries = tuple(e.strip() for e in text.split(",") if e.strip())
        try:
            if not entries:
                raise ValueError(f"no method given; valid: {', '.join(known.methods)}")
            for entry in entries:
                known.check_entry(entry)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return entries

    return parse


def source(known: Catalog):
    def parse(text: str) -> str:
        model, _, source = text.partition("=")
        if model not in known.scale_models or not source:
            raise argparse.ArgumentTypeError(
                f"expected MODEL=SOURCE with MODEL in {', '.join(known.scale_models)}, got {text!r}"
            )
        return text

    return parse


def reward_server(known: Catalog):
    def parse(text: str) -> str:
        name, _, url = text.partition("=")
        if name not in known.rewards or not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(
                f"expected NAME=URL with NAME in {', '.join(known.rewards)} and URL http://HOST:PORT, got {text!r}"
            )
        return text

    return parse


def budget(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive(expected: str):
    """argparse's parser for a finite number > 0, whose error says it expected `expected`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


tolerance = positive("a fraction > 0 (0.1: 10%)")
positive_number = positive("a number > 0")


def positive_int(text: str, largest: int = LARGEST_INT) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if int(text) > largest:
        shown = text if len(text) <= 20 else f"a {len(text)}-digit number"
        raise argparse.ArgumentTypeError(f"expected a positive integer of at most {largest}, got {shown}")
    return int(text)


def store_file(text: str) -> Path:
    """A results store's path: a file (existing or to be made), never a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name the store file in it, e.g. {path / 'store.sqlite'}")
    return path


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 (any free one) to 65535, got {text[:20]!r}")
    return int(text)


MOST_SEEDS = 1000
"""A sweep's seeds: each one is a run of every cell, so a count beyond this is a typo, not a benchmark."""


def seed_count(text: str) -> int:
    return positive_int(text, MOST_SEEDS)


def option(option: Option):
    """argparse's parser for a method option (methods/options.py): its type and declared range."""

    def parse(text: str):
        try:
            return parse_option(text, option.annotation, option.bounds)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line naming what is wrong and what is valid, and which takes no abbreviated
    option (argparse would read `--ddpo.clip 0.1` as `--ddpo.clip_range 0.1`, silently)."""

    def __init__(self, *args, method_options: dict[str, list[str]] | None = None, **kwargs):
        """`method_options`: each method's option names, which an unrecognized `--method.option` lists."""
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.method_options = method_options or {}

    def error(self, message: str):
        unknown = re.search(r"--([a-z_]+)\.([a-z_]+)", message)
        if message.startswith("unrecognized arguments") and unknown and unknown[1] in self.method_options:
            valid = self.method_options[unknown[1]]
            message += f" ({unknown[1]} options: {', '.join(valid) or 'none'})"
        missing = re.fullmatch(r"argument (--[\w.-]+): expected one argument", message)
        if missing:  # argparse reads a value like -inf or -1e-3 as a flag
            message += f" (a value starting with '-' is written {missing[1]}=VALUE)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def loggers(text: str) -> tuple[str, ...]:
    try:
        return check_loggers(tuple(n.strip() for n in text.split(",") if n.strip()))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
