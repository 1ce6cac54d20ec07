"""The text forms every table of the suite shares (leaderboard.md, report.html, the studies): an interval, a compute
amount, a rank, a markdown cell, a file name.
"""

from __future__ import annotations

import math
import re

import pandas as pd

USED_NAMES = {
    "nfe": "NFE",
    "reward_queries": "reward queries",
    "labels": "labels",
    "samples": "samples",
    "wall_s": "wall s",
}


def safe_name(name: str) -> str:
    """`name` as a part of a file name (rewards name the per-reward files)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def interval(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """`mean [lo, hi]` at 3 decimals, or the mean alone where the interval is a point at that precision (every seed
    agreed, or one seed); "—" for no value."""
    if mean is None or pd.isna(mean):
        return "—"
    spec = "+.3f" if signed else ".3f"
    low, high = f"{lo:{spec}}", f"{hi:{spec}}"
    return f"{mean:{spec}}" if low == high == f"{mean:{spec}}" else f"{mean:{spec}} [{low}, {high}]"


def cell_interval(row: dict, prefix: str, signed: bool = False) -> str:
    mean = row.get(f"{prefix}/mean", math.nan)
    return interval(mean, row.get(f"{prefix}/lo", math.nan), row.get(f"{prefix}/hi", math.nan), signed)


def rank_text(rank: float, tied: int = 1) -> str:
    """A place in a ranking: '=2' where it is shared, '—' for base and the cells without results."""
    if pd.isna(rank) or rank == 0:
        return "—"
    return f"={int(rank)}" if tied > 1 else str(int(rank))


def human(x: float) -> str:
    """3 significant digits with a k/M/B suffix: 1.2M, 35k, 12.3."""
    x = float(f"{x:.3g}")  # round first, so 999,999 becomes 1M rather than 1e+03k
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
