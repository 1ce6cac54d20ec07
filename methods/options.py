"""Method options: their declared ranges and their reading from text, with one parser for every place they are
written: the command line (`--ddpo.clip_range 0.1`) and the pipeline's options for its second stage
(`rl_options`). A field's declared type says how its text reads, booleans have one spelling everywhere, and every
number is checked against the range declared beside its field (`option(0.2, above=0)`) the moment it is read,
before any model loads."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TypeVar

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
NOUNS = {"int": "an integer", "float": "a number"}
NUMBERS = ("int", "float")
LARGEST_INT = 2**31 - 1
"""No integer option goes beyond this (a C int's range, which counts and seeds are handed to)."""
T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """The valid values of a numeric option: finite, and above / at least / at most / below the given ends."""

    above: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    below: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.above is not None and value <= self.above)
            or (self.at_least is not None and value < self.at_least)
            or (self.at_most is not None and value > self.at_most)
            or (self.below is not None and value >= self.below)
        )

    def __str__(self) -> str:
        ends = (("> ", self.above), (">= ", self.at_least), ("<= ", self.at_most), ("< ", self.below))
        return " and ".join(f"{sign}{end:g}" for sign, end in ends if end is not None) or "finite"


def option(
    default: T,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    added: bool = False,
) -> T:
    """A Config field whose values must lie in the given range (and be finite), e.g. `option(0.2, above=0)`.
    `added`: an option added to a method after runs of it were recorded; at its default it is left out of a run's
    identity (bench/runner.py: config_identity), so those runs keep their ids."""
    return dataclasses.field(
        default=default, metadata={"bounds": Bounds(above, at_least, at_most, below), "added": added}
    )


def fault(value, annotation: str, bounds: Bounds | None) -> str | None:
    """Why `value` is not valid for a field declared as `annotation` with `bounds`, or None when it is."""
    kind = annotation.removesuffix(" | None")
    if kind not in NUMBERS or value is None:
        return None
    if kind == "int" and abs(value) > LARGEST_INT:
        return f"must be within +-{LARGEST_INT}, got a {len(str(abs(value)))}-digit number"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if bounds is not None and not bounds.holds(value):
        return f"must be {bounds}, got {value:g}"
    return None


@dataclass(frozen=True)
class Options:
    """The base of every method's Config: a value outside a field's declared range is refused when the Config is
    made, whoever makes it (the command line, a suite, the pipeline). A method's options are named after its file,
    as the registry names the method (methods/ddpo.py: `ddpo.clip_range`)."""

    def __post_init__(self):
        method = type(self).__module__.rpartition(".")[2]
        for f in dataclasses.fields(self):
            reason = fault(getattr(self, f.name), str(f.type), f.metadata.get("bounds"))
            if reason:
                raise ValueError(f"{method}.{f.name} {reason}")


def parse_option(text: str, annotation: str, bounds: Bounds | None):
    """The value of `text` for a Config field declared as `annotation` (bool, int, float, str, or int or float
    `| None`, where none means the model's own default) with `bounds`; a ValueError says what was expected."""
    if annotation == "bool":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    optional = annotation.endswith(" | None")
    kind = annotation.removesuffix(" | None")
    if optional and text.lower() == "none":
        return None
    if kind in NOUNS:
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"expected {NOUNS[kind]}{' or none' if optional else ''}, got {text!r}") from None
        reason = fault(value, annotation, bounds)
        if reason:
            raise ValueError(reason)
        return value
    if kind == "str":
        return text
    raise ValueError(f"options of type {annotation} cannot be given as text")


@dataclass(frozen=True)
class Interval:
    """A numeric option's tuning range [low, high], searched on a log scale with `log` (a learning rate, a weight
    spanning decades) or a linear one; integers for an int option."""

    low: float
    high: float
    log: bool = False

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class Choice:
    """An option's tuning values, searched as categories."""

    values: tuple

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


Search = Interval | Choice


def search_fault(field: dataclasses.Field, search: Search, default_config) -> str | None:
    """Why `search` is not a valid tuning range for the Config field `field` (whose Config at its defaults is
    `default_config`), or None: the range must lie within the option's declared range, hold ints for an int option,
    and contain the option's default (the paper's value), so that the default is among what tuning can choose."""
    annotation, default = str(field.type), getattr(default_config, field.name)
    if isinstance(search, Choice):
        if len(search.values) < 2:
            return f"searches {search}: a choice needs at least two values"
        for value in search.values:
            try:
                dataclasses.replace(default_config, **{field.name: value})
            except (ValueError, TypeError) as error:
                return f"searches {search}, but {value!r} is not a valid value ({error})"
        return None if default in search.values else f"searches {search}, which leaves out its default {default!r}"
    kind = annotation.removesuffix(" | None")
    if kind not in NUMBERS:
        return f"searches {search}, an interval, but the option is a {annotation}: search it as a Choice"
    if not (math.isfinite(search.low) and math.isfinite(search.high) and search.low < search.high):
        return f"searches {search}: an interval needs finite ends, low < high"
    if kind == "int" and not (float(search.low).is_integer() and float(search.high).is_integer()):
        return f"searches {search}: an int option's interval has integer ends"
    if search.log and search.low <= 0:
        return f"searches {search}: a log-scale interval needs low > 0"
    for end in (search.low, search.high):
        reason = fault(end, annotation, field.metadata.get("bounds"))
        if reason:
            return f"searches {search}, but its end {reason}"
    if default is not None and not search.low <= default <= search.high:
        return f"searches {search}, which leaves out its default {default:g}"
    return None


def check_search_space(name: str, config_class: type, space: dict[str, Search]) -> None:
    """Refuses, in one line, a method's tuning search space (Trainer.search_space) that names an option its Config
    lacks or searches one outside the option's valid range (search_fault)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for option_name, search in space.items():
        if option_name not in fields:
            raise ValueError(f"{name}.search_space names no option {option_name!r}; options: {', '.join(fields)}")
        reason = search_fault(fields[option_name], search, config_class())
        if reason:
            raise ValueError(f"{name}.{option_name} {reason}")
