"""Shared by the control-plane tests: the real build, made once per CI run by ``.ci/run`` and
taken from the cache afterwards (a machine without it builds it here, once)."""

from __future__ import annotations

import sys

from virtproof.lab.controlplane import build as cp


def control_plane() -> cp.ControlPlaneBuild:
    """The pinned control plane, from the cache."""
    return cp.build(progress=lambda message: print(message, file=sys.stderr, flush=True)).build
