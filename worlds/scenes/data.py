"""The scenes world's data and prompts.

A scene is a 16x16 RGB canvas of four 8x8 slots (a 2x2 grid, read row-major); a slot is empty or holds one real
handwritten digit (scikit-learn's 8x8 digits, the digits world's splits) drawn in red, green or blue. Prompts are
GenEval's six families plus text rendering (rules.py), one a line in prompts/scenes/*.txt:
  train        738 prompts; the generators learn from scenes composed for them on the fly;
  eval_seen    8 train prompts of each family;
  eval_unseen  8 prompts of each family whose combination no train prompt has (two digits, a digit and a count or
               colour, a relation between two digits, two coloured digits, a number), and the single digits
               written as words ("a seven"), which no train prompt does.
"""

from __future__ import annotations

import itertools
import random

import torch

from models.prompts import load_prompt_set
from worlds.scenes.rules import (
    COLOURS,
    COUNT_WORDS,
    DIGIT_WORDS,
    EMPTY,
    RELATION_PAIRS,
    RELATIONS,
    SLOTS,
    Request,
    parse,
)

PATCH = 8
IMAGE_SHAPE = (len(COLOURS), 2 * PATCH, 2 * PATCH)
EVAL_PER_FAMILY = 8

Scene = list[tuple[int, int]]
"""(digit or EMPTY, colour index) per slot, in reading order."""


def draw_prompt_sets() -> dict[str, list[str]]:
    """The world's three prompt sets, drawn once from a fixed seed (prompts/scenes/*.txt hold them): every family's
    combinations, a fifth of each (at least EVAL_PER_FAMILY) held out for eval_unseen, EVAL_PER_FAMILY of each
    family evaluated."""
    rng = random.Random(0)
    pairs = list(itertools.combinations(range(10), 2))
    families = {
        "two": [f"a {a} and a {b}" for a, b in (rng.sample(pair, 2) for pair in pairs)],
        "counting": [f"{word} {d}s" for d in range(10) for word in COUNT_WORDS],
        "colour": [f"a {c} {d}" for d in range(10) for c in COLOURS],
        "position": [f"a {a} {r} a {b}" for a, b in itertools.permutations(range(10), 2) for r in RELATIONS],
        "binding": [
            f"a {ca} {a} and a {cb} {b}"
            for a, b in (rng.sample(pair, 2) for pair in pairs)
            for ca, cb in itertools.permutations(COLOURS, 2)
        ],
        "ocr": [
            f"the number {n}"
            for low, high in ((10, 100), (100, 1000), (1000, 10000))
            for n in sorted(rng.sample(range(low, high), 60))
        ],
    }
    train, seen, unseen = [f"a {d}" for d in range(10)], [], []
    seen += rng.sample(train, EVAL_PER_FAMILY)
    unseen += rng.sample([f"{'an' if word == 'eight' else 'a'} {word}" for word in DIGIT_WORDS], EVAL_PER_FAMILY)
    for prompts in families.values():
        held = set(rng.sample(prompts, max(len(prompts) // 5, EVAL_PER_FAMILY)))
        kept = [p for p in prompts if p not in held]
        train += kept
        seen += rng.sample(kept, EVAL_PER_FAMILY)
        unseen += rng.sample(sorted(held), EVAL_PER_FAMILY)
    return {"train": train, "eval_seen": seen, "eval_unseen": unseen}


def load_prompts() -> dict[str, list[str]]:
    """split -> prompts: the set prompts/scenes/ (models/prompts.py), each in one of the rules' families; the tuning
    split balanced over the families, as eval_seen is."""
    return load_prompt_set("scenes", group=lambda prompt: parse(prompt).family, check=parse)


def draw_index(n: int, generator: torch.Generator) -> int:
    """A uniform index in [0, n) from `generator`."""
    return int(torch.randint(0, n, (1,), generator=generator))


def scene_for(request: Request, generator: torch.Generator) -> Scene:
    """The scene the generators learn to draw for `request`, holding nothing else: the named digits in the canonical
    layout (in the prompt's order, in reading order from the first slot; a relation in its first slot pair), in their
    colours or random ones; the other slots empty. The layout is canonical, not random: a generator that must also
    learn where to put each digit learnt far less in a CPU build's steps (held-out score 0.10 with random layouts
    against 0.17 canonical, flow at 1,500 steps); the rules that score the scenes hold under any layout, so a
    fine-tuned generator is free to place its digits anywhere."""
    scene = [(EMPTY, 0)] * SLOTS

    def put(slot: int, obj: tuple[int, int | None]) -> None:
        scene[slot] = (obj[0], draw_index(len(COLOURS), generator) if obj[1] is None else obj[1])

    if request.family == "position":
        for slot, obj in zip(RELATION_PAIRS[request.relation][0], request.objects):
            put(slot, obj)
    elif request.family == "counting":
        for slot in range(request.count):
            put(slot, request.objects[0])
    else:
        for slot, obj in enumerate(request.objects):
            put(slot, obj)
    return scene


def render(scenes: list[Scene], images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scenes drawn with random handwritten digits of the split (images (N, 1, 8, 8), labels (N,)): (B, 3, 16, 16)."""
    by_digit = [torch.nonzero(labels == d).squeeze(1) for d in range(10)]
    canvas = torch.zeros(len(scenes), *IMAGE_SHAPE)
    for b, scene in enumerate(scenes):
        for slot, (digit, colour) in enumerate(scene):
            if digit == EMPTY:
                continue
            pick = by_digit[digit][draw_index(len(by_digit[digit]), generator)]
            row, col = divmod(slot, 2)
            canvas[b, colour, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = images[pick, 0]
    return canvas


def compose(prompts: list[str], images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One real scene for each prompt, drawn from the split: (B, 3, 16, 16) in [0, 1]."""
    return render([scene_for(parse(p), generator) for p in prompts], images, labels, generator)
