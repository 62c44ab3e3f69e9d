"""One flag for the whole process: set by a signal handler, every source stops at its next step
(a stage, a poll of a booting guest), so Ctrl-C or SIGTERM never waits for a boot or a
conversion to finish. ``bootproof.stop_all`` kills what is already running."""

from __future__ import annotations

import threading

CANCEL = threading.Event()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if the run was cancelled."""
    if CANCEL.is_set():
        raise KeyboardInterrupt("cancelled")
