"""Methods, rewards and worlds from installed packages: Python entry points in the groups `rlhf_bench.methods`,
`rlhf_bench.rewards` and `rlhf_bench.worlds` (docs/extending.md). A package declares them in its pyproject.toml,

    [project.entry-points."rlhf_bench.methods"]
    my_method = "my_package.my_method:MyMethod"

and once it is installed the registries (methods.METHODS, rewards.REWARDS, worlds.WORLDS) hold its entries beside the
built-in ones: the command line, the suites and the contract tests see them as they see those."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

GROUPS = ("rlhf_bench.methods", "rlhf_bench.rewards", "rlhf_bench.worlds")

Entry = TypeVar("Entry")


def installed_entries(
    group: str, builtin: dict[str, Entry], expected: str, accepts: Callable[[object], bool]
) -> dict[str, Entry]:
    """The loaded entries of entry-point group `group` by name, each one that `accepts` takes (else a ValueError says
    it is not `expected`). A name that a built-in entry has already, or that two packages declare, is refused: a
    name means one thing in a run's identity."""
    if group not in GROUPS:
        raise ValueError(f"unknown entry-point group {group!r}; valid: {', '.join(GROUPS)}")
    found: dict[str, Entry] = {}
    sources: dict[str, str] = {}
    for point in entry_points(group=group):
        source = point.dist.name if point.dist is not None else point.value
        if point.name in builtin:
            raise ValueError(f"{source} declares {group} entry {point.name!r}, which is built in; rename it")
        if point.name in found:
            raise ValueError(f"{group} entry {point.name!r} is declared by both {sources[point.name]} and {source}")
        loaded = point.load()
        if not accepts(loaded):
            raise ValueError(f"{source}'s {group} entry {point.name!r} ({point.value}) is not {expected}")
        found[point.name], sources[point.name] = loaded, source
    return found
