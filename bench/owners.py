"""Who holds a run in a results store (bench/store.py: its leases): a process, named by its host and process id."""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def owner_id() -> str:
    """This process, as the owner of the runs it claims: its host and process id."""
    return f"{HOST}:{os.getpid()}"


def owner_is_dead(owner: str) -> bool:
    """Whether the owner is a process of this host that no longer exists (its lease need not go stale first)."""
    host, _, pid = owner.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
