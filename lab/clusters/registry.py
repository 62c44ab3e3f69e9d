"""Registers the KubeVirt labs (``kind``, ``kubeadm``, ``existing``) in ``lab.factory.HANDLES``."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def _handle(scenario: Any, lab_id: str, persistent: bool) -> Any:
    from lab.clusters.handle import KubeVirtLabHandle

    return KubeVirtLabHandle(scenario, lab_id, persistent)


def register(handles: MutableMapping[str, Any]) -> None:
    for kind in ("kind", "kubeadm", "existing"):
        handles[kind] = _handle
