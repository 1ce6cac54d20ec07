"""`python -m bench` that kills itself (SIGKILL, as a power cut or the OOM killer would) at one chosen moment, so that a
test can resume the sweep from exactly there. Test scaffolding, not a mode of the harness: it wraps the harness from
outside.

BENCH_FAULT=KIND:N kills the process at the N-th event of KIND in this process:
  step        at the start of a training step (mid-run, between checkpoints);
  evaluate    at the start of a milestone's evaluation (trained, not yet recorded);
  checkpoint  inside a checkpoint write, with the new file's temporary half on disk and the rename not yet done;
  write       inside a results-store transaction, its rows written but not committed.
"""

import os
import signal
import sys
from contextlib import contextmanager

import bench.runner
from bench.cli import main
from bench.store import Store
from methods import METHODS

KIND, _, COUNT = os.environ["BENCH_FAULT"].partition(":")
events = 0


def event(kind: str) -> None:
    """Counts an event; the N-th of the chosen kind kills this process."""
    global events
    if kind == KIND:
        events += 1
        if events == int(COUNT):
            os.kill(os.getpid(), signal.SIGKILL)


def wrap(function, kind):
    def wrapped(*args, **kwargs):
        event(kind)
        return function(*args, **kwargs)

    return wrapped


def half_written_checkpoint(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / f".{path.name}.half.tmp").write_bytes(b"PK\x03\x04 the start of a checkpoint")
    event("checkpoint")
    save_checkpoint(obj, path)


_write = Store._write


@contextmanager
def write_then_maybe_die(self):
    with _write(self) as conn:
        yield conn
        event("write")  # the rows are in the transaction, not yet committed


if __name__ == "__main__":
    for cls in METHODS.values():  # every registered trainer, whatever base it extends (PolicyGradientTrainer's)
        if "step" in vars(cls):
            cls.step = wrap(cls.step, "step")
    bench.runner.evaluate = wrap(bench.runner.evaluate, "evaluate")
    save_checkpoint = bench.runner.atomic_torch_save
    bench.runner.atomic_torch_save = half_written_checkpoint
    Store._write = write_then_maybe_die
    sys.exit(main())
