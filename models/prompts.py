"""Prompt sets: plain text files, one prompt a line, in three splits, and a fourth derived from them for tuning.

A prompt set is either a directory of `prompts/` holding train.txt, eval_seen.txt and eval_unseen.txt (e.g.
`prompts/animals/`, DDPO's 45 common animals: 36 to train on, 9 held out), or any single prompt file a user
passes, split here deterministically: every fifth prompt is held out (eval_unseen), the rest is the train split,
and every fourth train prompt is also evaluated (eval_seen). Blank lines and lines starting with '#' are skipped.

The tuning split, `eval_tune`, is what a tune (bench/tune.py) scores its trials on: train prompts that eval_seen does
not hold, as many as eval_seen has, drawn evenly through the train file (by `group`, evenly through each group). A tune
never reads eval_unseen, so the reported score on it stays out of sample.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PROMPT_ROOT = Path(__file__).resolve().parents[1] / "prompts"
SPLITS = ("train", "eval_seen", "eval_unseen")
TUNE_SPLIT = "eval_tune"


def read_prompt_file(path: Path, check: Callable[[str], object] | None = None) -> list[str]:
    """The prompts of a file; `check` (a world's reader of its prompt language) raises ValueError on a prompt it
    cannot read, which is refused naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        if check is not None:
            try:
                check(prompt)
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: {error}") from None
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts (one prompt a line)")
    return prompts


def split_prompts(prompts: list[str]) -> dict[str, list[str]]:
    """The three splits of one list of prompts: every fifth held out, every fourth train prompt also evaluated."""
    if len(prompts) < 5:
        raise ValueError(f"a prompt file needs at least 5 prompts to hold one out for evaluation, got {len(prompts)}")
    unseen = prompts[4::5]
    train = [p for i, p in enumerate(prompts) if i % 5 != 4]
    return {"train": train, "eval_seen": train[::4], "eval_unseen": unseen}


def tuning_split(train: list[str], seen: list[str], group=lambda prompt: "") -> list[str]:
    """The tuning split: train prompts not in `seen`, len(seen) of them (or all there are), shared out as evenly as
    the `group`s of them allow (a small group gives all it has, the others share the rest) and spread evenly through
    each group; in the train file's order."""
    held = set(seen)
    groups: dict[str, list[str]] = {}
    for prompt in train:
        if prompt not in held:
            groups.setdefault(group(prompt), []).append(prompt)
    quota = dict.fromkeys(groups, 0)
    remaining, open_groups = len(seen), list(groups)
    while remaining and open_groups:
        share = max(1, remaining // len(open_groups))
        for name in list(open_groups):
            added = min(share, len(groups[name]) - quota[name], remaining)
            quota[name] += added
            remaining -= added
            if quota[name] == len(groups[name]):
                open_groups.remove(name)
            if not remaining:
                break
    chosen = {prompts[k * len(prompts) // quota[name]] for name, prompts in groups.items() for k in range(quota[name])}
    return [prompt for prompt in train if prompt in chosen]


def load_prompt_set(
    name_or_path: str | Path, group=lambda prompt: "", check: Callable[[str], object] | None = None
) -> dict[str, list[str]]:
    """split -> prompts, from a set under prompts/ by name, a directory of split files, or a single prompt file; with
    the tuning split derived from them (`group`: the prompts' groups it is balanced over, tuning_split). `check`:
    read_prompt_file's, on every prompt."""
    path = Path(name_or_path)
    if not path.exists() and (PROMPT_ROOT / str(name_or_path)).is_dir():
        path = PROMPT_ROOT / str(name_or_path)
    if path.is_dir():
        missing = [s for s in SPLITS if not (path / f"{s}.txt").is_file()]
        if missing:
            raise ValueError(
                f"prompt set {path} lacks {', '.join(f'{s}.txt' for s in missing)}; a set directory holds "
                f"{', '.join(f'{s}.txt' for s in SPLITS)}"
            )
        sets = {split: read_prompt_file(path / f"{split}.txt", check) for split in SPLITS}
        return {**sets, TUNE_SPLIT: tuning_split(sets["train"], sets["eval_seen"], group)}
    if path.is_file():
        sets = split_prompts(read_prompt_file(path, check))
        return {**sets, TUNE_SPLIT: tuning_split(sets["train"], sets["eval_seen"], group)}
    sets = sorted(p.name for p in PROMPT_ROOT.iterdir() if p.is_dir())
    raise ValueError(
        f"no prompt set {str(name_or_path)!r}: give a set under prompts/ ({', '.join(sets)}), "
        "a directory of train/eval_seen/eval_unseen.txt, or a file with one prompt a line"
    )
