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


def leftovers_cleaner() -> list[str]:
    """For ``virtproof lab clean`` without a scenario: with ``$KUBECONFIG`` set, delete the
    labelled objects of runs started on this host whose owner process is gone."""
    import os

    if not os.environ.get("KUBECONFIG"):
        return []
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from lab.clusters.handle import _owner_gone
    from lab.kubevirt import cleanup
    from lab.kubevirt.connect import ConnectOptions, KubeconfigError, connect
    from lab.kubevirt.resources import Kube

    try:
        kube = Kube(connect(ConnectOptions()))
    except KubeconfigError as exc:
        return [f"(kubevirt: {exc})"]
    try:
        removed: list[str] = []
        for run_id in sorted({item.run_id for item in cleanup.leftovers(kube)}):
            if _owner_gone(run_id):
                removed += cleanup.clean(kube, run_id)
        return removed
    except (ApiException, HTTPError, OSError) as exc:
        return [f"(kubevirt: cluster unreachable: {type(exc).__name__})"]
    finally:
        kube.conn.close()
