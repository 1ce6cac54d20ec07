"""Atomic file writes: a reader, or a process killed mid-write, never sees half a file, nor a folder of files
generated together half rewritten."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, so that two writers of the same file never write into each other's.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a published table private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    import torch  # here, not above: the command line writes its catalog through this module without loading torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def check_writable(folder: Path) -> None:
    """Raises OSError now, rather than after hours of work, when files cannot be written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


STAGING = ".staging"
COMPLETE = ".complete"  # in a staging folder: every file is written; what is left is moving them into place


@contextmanager
def replaced_together(folder: Path) -> Iterator[Path]:
    """A staging folder whose files replace their namesakes in `folder` together when the block ends, or, when it
    raises, not at all. One writer of a folder at a time (a lock on the folder). A writer killed while writing leaves
    an incomplete staging, which the next writer discards; one killed while moving the files into place leaves a
    complete one, whose moves the next writer finishes: either way the folder ends all old or all new."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _settle(folder)
        staging = folder / STAGING
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging)
            raise
        (staging / COMPLETE).touch()
        _settle(folder)
    finally:
        os.close(lock)  # and with it the lock


def _settle(folder: Path) -> None:
    """Finishes (complete) or discards (incomplete) a staging an earlier writer left in `folder`."""
    staging = folder / STAGING
    if not staging.exists():
        return
    if (staging / COMPLETE).exists():
        for path in sorted(staging.iterdir()):
            if path.name != COMPLETE:
                os.replace(path, folder / path.name)
    shutil.rmtree(staging)
