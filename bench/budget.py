"""A run's budget: an amount of one unit of compute (bench/meter.py counts them as a run spends them). Torch-free, so
the command line checks a budget before anything heavy is imported."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNITS = ("nfe", "reward_queries", "samples", "wall_s")
"""The units a run's budget can be expressed in."""
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    """An amount of one unit of compute, e.g. `nfe:200k` or `reward_queries:5000`."""

    unit: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        unit, _, amount = text.rpartition(":")
        unit = unit or "nfe"
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", amount)
        amount = float(match[1]) * _SUFFIX[match[2].lower()] if match else math.nan
        if unit not in UNITS or not 0 < amount < math.inf:
            raise ValueError(
                f"bad budget {text!r}: expected [UNIT:]AMOUNT with UNIT in {', '.join(UNITS)} "
                f"(default nfe) and AMOUNT a finite number > 0, e.g. nfe:200k or reward_queries:5000"
            )
        return cls(unit, amount)

    def __str__(self) -> str:
        return f"{self.unit}:{self.amount:g}"
