"""Names checked against what is valid, with one-line errors that list it: torch-free, for the command line's
catalog (bench/catalog.py) and the suites (bench/experiments/) alike."""

from __future__ import annotations

import math

SHARDINGS = ("none", "fsdp2")
"""`bench run --sharding`: none, a scale world's LoRA adapters, data-parallel under a launcher; fsdp2, every weight of
its denoiser, sharded over the processes (bench/parallel.py)."""


def check_names(kind: str, names, valid) -> tuple[str, ...]:
    """`names` if each is one of `valid` (and there is one), else a ValueError listing what is valid."""
    names = tuple(names)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; valid: {', '.join(valid)}")
    return names


def check_entry(entry: str, method_families: dict[str, tuple[str, ...]], model_families: dict[str, str]) -> None:
    """A ValueError unless `entry`, `method[/variant][@model]`, names a method (of `method_families`: name -> the
    families it fine-tunes) and, where it names one, a model (of `model_families`: name -> family) of a family the
    method fine-tunes. Its variant is the suite's to check."""
    name, _, model = entry.partition("@")
    method = name.partition("/")[0]
    check_names("method", [method], method_families)
    if not model:
        return
    check_names("model", [model], model_families)
    families = method_families[method]
    if model_families[model] not in families:
        raise ValueError(
            f"{method} cannot fine-tune {model!r} (a {model_families[model]} model); it runs on "
            f"{', '.join(families)} models"
        )


def reward_terms(spec: str, valid) -> tuple[tuple[float, str], ...]:
    """The (weight, reward) terms of a reward spec: one reward's name, or several joined by `+`, each with an optional
    positive `WEIGHT*` (1 without), e.g. `geneval+0.5*ocr`; a ValueError naming what is wrong and what is valid."""
    terms = []
    for text in spec.split("+"):
        weight, star, name = text.strip().rpartition("*")
        try:
            value = float(weight) if star else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"reward spec {spec!r}: the weight {weight!r} of {name!r} must be a positive number "
                f"(REWARD or WEIGHT*REWARD terms joined by +, e.g. digit+0.5*compress)"
            )
        check_names("reward", [name], valid)
        terms.append((value, name))
    names = [name for _, name in terms]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"reward spec {spec!r} names {', '.join(map(repr, repeated))} more than once")
    return tuple(terms)


def canonical_reward(spec: str, valid) -> str:
    """A reward spec (see reward_terms) checked and spelt one way: weights as %g, a weight of 1 left out, no spaces."""
    return "+".join(name if weight == 1 else f"{weight:g}*{name}" for weight, name in reward_terms(spec, valid))
