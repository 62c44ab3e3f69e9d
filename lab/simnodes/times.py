"""Kubernetes time stamps as the Go components write them.

``metav1.Time`` marshals as RFC 3339 in UTC with whole seconds (``2026-12-02T05:00:29Z``): the
fraction is dropped, not rounded (``k8s.io/apimachinery/pkg/apis/meta/v1/time.go``
``MarshalJSON`` formats with ``time.RFC3339`` after ``UTC()``). ``metav1.MicroTime`` (a Lease's
``renewTime``) keeps microseconds (``micro_time.go``, ``RFC3339Micro``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def metav1_time(epoch: float | None = None) -> str:
    """``metav1.Now()`` as it appears in an object: whole seconds, truncated."""
    moment = datetime.fromtimestamp(int(epoch if epoch is not None else time.time()), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(epoch: float | None = None) -> str:
    moment = datetime.fromtimestamp(epoch if epoch is not None else time.time(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of a metav1.Time / MicroTime string, None if absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
