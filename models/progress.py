"""Console output of long work (building a world, sweeping a suite, a run's milestones).

Progress bars: tqdm on a terminal, silent when stderr is a log file or CI. The CLI's --progress (`show_bars`) can
force them on (always) or off (never); a sweep's worker processes draw none (`relay_to`).

Lines: `say` writes each line whole, in one write, above any progress bar of this process (the bar is lifted and
redrawn), so lines never land on a bar's line. A sweep's worker processes hand their lines to the sweep (`relay_to`),
which says them: lines of several workers never interleave mid-line, and never cross the sweep's bar.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

# tqdm's `disable`: None disables the bar unless stderr is a terminal.
MODES = {"auto": None, "always": False, "never": True}
_relay = None  # in a worker process: the queue its lines go to
_mode = "auto"


def show_bars(mode: str) -> None:
    """Draw this process's progress bars: auto (only when stderr is a terminal), always or never."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode


def progress(iterable=None, *, total: int | None = None, desc: str | None = None) -> tqdm:
    return tqdm(iterable, total=total, desc=desc, disable=MODES[_mode], leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """One line of output, whole (see the module docstring)."""
    if _relay is not None:
        _relay.put(line)
        return
    with tqdm.external_write_mode():
        data = line.rstrip("\n") + "\n"
        try:
            descriptor = sys.stdout.fileno()
        except (AttributeError, io.UnsupportedOperation):  # a replaced stdout (a test's capture) has no descriptor
            sys.stdout.write(data)
            sys.stdout.flush()
            return
        sys.stdout.flush()  # what print() left buffered goes first
        os.write(descriptor, data.encode())


def relay_to(queue) -> None:
    """In a worker process: send every `say` line to `queue` (a multiprocessing queue the sweep reads with
    `relayed`), and draw no bars of its own (the sweep draws one for all)."""
    global _relay
    _relay = queue
    show_bars("never")


@contextmanager
def relayed(queue) -> Iterator[None]:
    """While inside, say every line that worker processes put on `queue`."""

    def pump() -> None:
        while (line := queue.get()) is not None:
            say(line)

    thread = threading.Thread(target=pump, name="worker lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        queue.put(None)  # after every worker's lines: the queue is first in, first out
        thread.join()
