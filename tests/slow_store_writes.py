"""`python -m bench`, with every results-store write held open inside its transaction for a while and
logged, so that a test can kill a sweep in the middle of a write. Test scaffolding, not a mode of the
harness: it wraps the store from outside.

SLOW_WRITES_LOG: a file to which "open" is appended once a write's rows are in its transaction (not yet
committed) and "committed" once it is. SLOW_WRITES_S: how long each write stays open.
"""

import os
import sys
import time
from contextlib import contextmanager

from bench.cli import main
from bench.store import Store

_write = Store._write


def _mark(line: str) -> None:
    with open(os.environ["SLOW_WRITES_LOG"], "a") as log:
        log.write(line + "\n")


@contextmanager
def _slow_write(self):
    with _write(self) as conn:
        yield conn
        _mark("open")
        time.sleep(float(os.environ["SLOW_WRITES_S"]))
    _mark("committed")


if __name__ == "__main__":
    Store._write = _slow_write
    sys.exit(main())
