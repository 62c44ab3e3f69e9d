"""``virtproof lab clean`` for the KubeVirt labs when no scenario names a cluster."""

from __future__ import annotations


def leftovers_cleaner() -> list[str]:
    """For ``virtproof lab clean`` without a scenario: with ``$KUBECONFIG`` set, delete the
    labelled objects of runs started on this host whose owner process is gone."""
    import os

    if not os.environ.get("KUBECONFIG"):
        return []
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from virtproof.lab.clusters.handle import _owner_gone
    from virtproof.lab.kubevirt import cleanup
    from virtproof.lab.kubevirt.connect import ConnectOptions, KubeconfigError, connect
    from virtproof.lab.kubevirt.resources import Kube

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
