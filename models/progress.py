"""Progress bars for long work (building a world, sweeping a suite, a run's milestones): tqdm on a
terminal, silent when stderr is a log file or CI. BENCH_PROGRESS=always or never overrides the terminal
check; the CLI's --progress sets it, and worker processes inherit it."""

from __future__ import annotations

import os

from tqdm import tqdm

# tqdm's `disable`: None disables the bar unless stderr is a terminal.
MODES = {"auto": None, "always": False, "never": True}


def progress(iterable=None, *, total: int | None = None, desc: str | None = None) -> tqdm:
    mode = os.environ.get("BENCH_PROGRESS", "auto")
    if mode not in MODES:
        raise ValueError(f"BENCH_PROGRESS must be one of {', '.join(MODES)}, got {mode!r}")
    return tqdm(iterable, total=total, desc=desc, disable=MODES[mode], leave=False, dynamic_ncols=True)
