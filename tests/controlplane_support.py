"""Shared by the control-plane tests: the real build, made once per CI run by ``.ci/run`` and
taken from the cache afterwards (a machine without it builds it here, once), and the wait for
something the real controllers do."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from virtproof.lab.controlplane import build as cp


def control_plane() -> cp.ControlPlaneBuild:
    """The pinned control plane, from the cache."""
    return cp.build(progress=lambda message: print(message, file=sys.stderr, flush=True)).build


T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float, interval: float) -> T:
    """``check()``'s first truthy value, polled every ``interval`` s; an AssertionError naming
    ``what`` and the last value when ``timeout`` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(interval)
