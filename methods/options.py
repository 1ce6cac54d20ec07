"""Method options from text, with one parser for every place they are written: the command line
(`--ddpo.clip_range 0.1`) and the pipeline's options for its second stage (`rl_options`). A field's declared type
says how its text reads, and booleans have one spelling everywhere."""

from __future__ import annotations

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
NOUNS = {"int": "an integer", "float": "a number"}


def parse_option(text: str, annotation: str):
    """The value of `text` for a Config field declared as `annotation` (bool, int, float, str, or int or float
    `| None`, where none means the model's own default); a ValueError says what was expected."""
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
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"expected {NOUNS[kind]}{' or none' if optional else ''}, got {text!r}") from None
    if kind == "str":
        return text
    raise ValueError(f"options of type {annotation} cannot be given as text")
