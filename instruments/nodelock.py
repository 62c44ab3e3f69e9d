"""A host-wide lock for suites that must have the node to themselves (density).

The density suite holds it exclusively for its whole ramp; suites that share the node take it
shared (``node_lock(exclusive=False)``), so they wait while a density ramp runs and a ramp waits
for them to finish. It is an ``flock`` on ``<state root>/node.lock``, so it also keeps two runs
(two ``virtproof run`` processes, or pytest-xdist workers) on this host apart, and the kernel
drops it when its holder dies.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtproof.core.statedir import state_root


class NodeBusy(TimeoutError):
    """The node lock was not free within the timeout."""


def lock_path() -> Path:
    return state_root() / "node.lock"


@contextmanager
def node_lock(exclusive: bool = True, timeout: float | None = None, poll: float = 0.5) -> Iterator[Path]:
    """Hold the node lock (exclusive or shared) for the ``with`` block; NodeBusy after ``timeout``."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(path, "a") as fh:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise NodeBusy(f"{path}: held by another suite or run for {timeout:.0f} s") from None
                time.sleep(poll)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
