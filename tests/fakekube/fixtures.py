"""Helpers the KubeVirt tests share: a started fake cluster and a platform opened on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from virtproof.lab.kubevirt.config import ImageConfig, KubeVirtConfig
from virtproof.lab.kubevirt.connect import ConnectOptions
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.platform import KubeVirtPlatform

from fakekube import FakeCluster

FEDORA = ImageConfig(DiskSource(container_disk="quay.io/containerdisks/fedora:41"), user="fedora")


def config(cluster: FakeCluster, state: Path, run_id: str = "t1", **overrides: Any) -> KubeVirtConfig:
    base: dict[str, Any] = {
        "run_id": run_id, "state_dir": state,
        "connect": ConnectOptions(str(cluster.kubeconfig), qps=200, burst=200),
        "images": {"micro": FEDORA}, "delete_timeout_s": 10.0,
    }
    base.update(overrides)
    return KubeVirtConfig(**base)


def open_platform(cluster: FakeCluster, state: Path, run_id: str = "t1", **overrides: Any) -> KubeVirtPlatform:
    return KubeVirtPlatform.open(config(cluster, state, run_id, **overrides))
