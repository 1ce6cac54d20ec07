"""Names checked against what is valid, with one-line errors that list it: torch-free, for the command line's
catalog (bench/catalog.py) and the suites (bench/experiments/) alike."""

from __future__ import annotations


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
