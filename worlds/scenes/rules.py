"""The compositional world's language and its rules: what a prompt asks of a scene, and whether a scene does it.

A scene is a 2x2 grid of slots, read row-major (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); each slot
is empty or holds one digit drawn in one colour (red, green or blue). Prompts come in GenEval's six families plus
text rendering, each with one phrasing (the single family has a second, with the digit as a word, for held-out
evaluation):

  single    "a 7"                      a 7 somewhere
  two       "a 3 and a 5"              a 3 and a 5
  counting  "three 7s"                 exactly three 7s
  colour    "a red 4"                  a red 4
  position  "a 2 above a 9"            a 2 directly above a 9 (same column); "below", "left of", "right of" alike
  binding   "a red 3 and a blue 8"     a red 3 and a blue 8
  ocr       "the number 4071"          the filled slots, in reading order, spell 4071

GenEval scores an image 1 when its detector's reading satisfies the prompt and 0 otherwise, and reports the mean
per family; `strict` is that rule. `partial` gives partial credit (the fraction of the prompt's parts satisfied; for
counts, how near the count is; for numbers, 1 minus the edit distance over the length, as Flow-GRPO's OCR reward),
the reward a policy-gradient method trains on. `satisfaction_probability` is the probability that a scene drawn
from per-slot reading distributions satisfies the prompt, exactly and differentiably, with the slots read
independently: the reader's likelihood of the requested content, which for a number of four digits is the product of
the per-slot probabilities of its digits.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import torch

FAMILIES = ("single", "two", "counting", "colour", "position", "binding", "ocr")
COLOURS = ("red", "green", "blue")
RELATIONS = ("above", "below", "left of", "right of")
COUNT_WORDS = {"two": 2, "three": 3, "four": 4}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SLOTS = 4
EMPTY = 10
"""The reading of an empty slot (digits are 0-9)."""
READ_CLASSES = 11

_D = r"([0-9])"
_C = "(" + "|".join(COLOURS) + ")"
_PATTERNS = {
    "single": re.compile(rf"a {_D}|an? ({'|'.join(DIGIT_WORDS)})"),
    "two": re.compile(rf"a {_D} and a {_D}"),
    "counting": re.compile(rf"({'|'.join(COUNT_WORDS)}) {_D}s"),
    "colour": re.compile(rf"a {_C} {_D}"),
    "position": re.compile(rf"a {_D} ({'|'.join(RELATIONS)}) a {_D}"),
    "binding": re.compile(rf"a {_C} {_D} and a {_C} {_D}"),
    "ocr": re.compile(r"the number ([0-9]{2,4})"),
}


@dataclass(frozen=True)
class Request:
    """What a prompt asks. `objects`: (digit, colour index or None) of each thing it names, in the prompt's order."""

    family: str
    objects: tuple[tuple[int, int | None], ...]
    count: int = 1
    """How many of the one object (counting)."""
    relation: str = ""
    """Where the first object is relative to the second (position)."""
    text: str = ""
    """The digits to read, in reading order (ocr)."""


@functools.lru_cache(maxsize=65536)
def parse(prompt: str) -> Request:
    """The request of a prompt of this world, or a ValueError quoting it and listing the families' forms (cached: a
    reward parses the same prompts at every step)."""
    for family, pattern in _PATTERNS.items():
        match = pattern.fullmatch(prompt)
        if match is None:
            continue
        g = match.groups()
        if family == "single":
            return Request(family, ((int(g[0]) if g[0] is not None else DIGIT_WORDS.index(g[1]), None),))
        if family == "two":
            request = Request(family, ((int(g[0]), None), (int(g[1]), None)))
        elif family == "counting":
            return Request(family, ((int(g[1]), None),), count=COUNT_WORDS[g[0]])
        elif family == "colour":
            return Request(family, ((int(g[1]), COLOURS.index(g[0])),))
        elif family == "position":
            request = Request(family, ((int(g[0]), None), (int(g[2]), None)), relation=g[1])
        elif family == "binding":
            request = Request(family, ((int(g[1]), COLOURS.index(g[0])), (int(g[3]), COLOURS.index(g[2]))))
        else:
            text = g[0]
            return Request(family, tuple((int(c), None) for c in text), text=text)
        if request.objects[0][0] == request.objects[1][0]:
            raise ValueError(f"a {family} prompt names two different digits, got {prompt!r}")
        return request
    raise ValueError(
        f"not a prompt of the compositional world: {prompt!r}; its forms: 'a 7', 'a seven' ('an eight'), "
        "'a 3 and a 5', 'three 7s', 'a red 4', 'a 2 above a 9' (below, left of, right of), 'a red 3 and a blue 8', "
        "'the number 4071'"
    )


# Slot pairs (first, second) that put the first directly above / below / left of / right of the second.
RELATION_PAIRS = {
    "above": ((0, 2), (1, 3)),
    "below": ((2, 0), (3, 1)),
    "left of": ((0, 1), (2, 3)),
    "right of": ((1, 0), (3, 2)),
}


def _holds(scene: list[tuple[int, int]], obj: tuple[int, int | None], slot: int) -> bool:
    digit, colour = scene[slot]
    return digit == obj[0] and (obj[1] is None or colour == obj[1])


def _present(scene: list[tuple[int, int]], obj: tuple[int, int | None]) -> bool:
    return any(_holds(scene, obj, slot) for slot in range(SLOTS))


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def reading(scene: list[tuple[int, int]]) -> str:
    """The digits of the filled slots in reading order."""
    return "".join(str(digit) for digit, _ in scene if digit != EMPTY)


def partial(request: Request, scene: list[tuple[int, int]]) -> float:
    """The fraction of the request a scene ((digit or EMPTY, colour) per slot) satisfies, in [0, 1]."""
    family, objects = request.family, request.objects
    if family == "counting":
        found = sum(scene[slot][0] == objects[0][0] for slot in range(SLOTS))
        return max(0.0, 1 - abs(found - request.count) / request.count)
    if family == "ocr":
        return max(0.0, 1 - _edit_distance(reading(scene), request.text) / len(request.text))
    if family in ("colour", "binding"):
        # a named digit in another colour earns half of its part
        parts = [1.0 if _present(scene, obj) else 0.5 * _present(scene, (obj[0], None)) for obj in objects]
        return sum(parts) / len(parts)
    parts = [float(_present(scene, obj)) for obj in objects]
    if family == "position":
        first, second = objects
        parts.append(
            float(
                any(_holds(scene, first, a) and _holds(scene, second, b) for a, b in RELATION_PAIRS[request.relation])
            )
        )
    return sum(parts) / len(parts)


def strict(request: Request, scene: list[tuple[int, int]]) -> bool:
    """GenEval's rule: the scene satisfies the whole request."""
    return partial(request, scene) == 1.0


def _none_of(p: torch.Tensor) -> torch.Tensor:
    """P(no slot holds it) from per-slot probabilities (..., SLOTS)."""
    return (1 - p).prod(dim=-1)


def satisfaction_probability(request: Request, digits: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """P(a scene read slot by slot, independently, satisfies `request`), given per-slot reading probabilities
    `digits` (SLOTS, READ_CLASSES) (class EMPTY: empty) and `colours` (SLOTS, len(COLOURS)): a differentiable scalar.
    Exact under independence: inclusion-exclusion for two objects (one slot cannot hold both: different digits),
    the Poisson-binomial distribution for counts, the sum over which slots are filled for numbers."""
    objects = request.objects

    def chance(obj: tuple[int, int | None]) -> torch.Tensor:  # (SLOTS,): each slot holds obj
        digit, colour = obj
        return digits[:, digit] * (1 if colour is None else colours[:, colour])

    family = request.family
    if family in ("single", "colour"):
        return 1 - _none_of(chance(objects[0]))
    if family in ("two", "binding"):
        a, b = chance(objects[0]), chance(objects[1])
        return (1 - _none_of(a) - _none_of(b) + _none_of(a + b)).clamp(0, 1)
    if family == "position":
        a, b = chance(objects[0]), chance(objects[1])
        pairs = RELATION_PAIRS[request.relation]
        # the two slot pairs are disjoint, so their events are independent
        return 1 - torch.stack([1 - a[i] * b[j] for i, j in pairs]).prod()
    if family == "counting":
        p = chance(objects[0])
        counts = torch.ones(1, dtype=p.dtype, device=p.device)  # P(count = k) over the slots seen so far
        for slot in range(SLOTS):
            counts = torch.cat([counts * (1 - p[slot]), torch.zeros(1, dtype=p.dtype, device=p.device)]) + torch.cat(
                [torch.zeros(1, dtype=p.dtype, device=p.device), counts * p[slot]]
            )
        return counts[request.count]
    total = digits.new_zeros(())
    for filled in itertools.combinations(range(SLOTS), len(request.text)):
        term = digits.new_ones(())
        for slot in range(SLOTS):
            term = term * (
                digits[slot, int(request.text[filled.index(slot)])] if slot in filled else digits[slot, EMPTY]
            )
        total = total + term
    return total
