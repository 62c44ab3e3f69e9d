"""Installing pinned KubeVirt and CDI (operator + CR) and virtproof's RBAC, as kubectl steps."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from virtproof.lab.clusters.steps import Step

KUBEVIRT_RELEASES = "https://github.com/kubevirt/kubevirt/releases/download"
CDI_RELEASES = "https://github.com/kubevirt/containerized-data-importer/releases/download"
RBAC_DIR = resources.files("virtproof.deploy").joinpath("rbac")  # package data


def kubevirt_cr(use_emulation: bool, feature_gates: tuple[str, ...] = ()) -> dict[str, Any]:
    """The KubeVirt CR: emulation where KVM does not work; LiveMigrate eviction by default; the
    feature gates the scenario needs (e.g. MigrationStallDetection for a downtime limit, which
    v1.9's MigrationPolicy admitter otherwise refuses) and no others."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
        "spec": {
            "certificateRotateStrategy": {},
            "configuration": {
                "developerConfiguration": {"useEmulation": use_emulation, "featureGates": list(feature_gates)},
                "evictionStrategy": "LiveMigrate",
            },
            "customizeComponents": {},
            "imagePullPolicy": "IfNotPresent",
            "workloadUpdateStrategy": {},
        },
    }


def cdi_cr() -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "CDI",
        "metadata": {"name": "cdi"},
        "spec": {"config": {"featureGates": ["HonorWaitForFirstConsumer"]},
                 "imagePullPolicy": "IfNotPresent", "infra": {}, "workload": {}},
    }


def install_steps(kubectl: str, kubevirt_version: str, cdi_version: str, use_emulation: bool,
                  host: str = "local", feature_gates: tuple[str, ...] = ()) -> list[Step]:
    kv_operator = f"{KUBEVIRT_RELEASES}/{kubevirt_version}/kubevirt-operator.yaml"
    cdi_operator = f"{CDI_RELEASES}/{cdi_version}/cdi-operator.yaml"
    rbac = RBAC_DIR.joinpath("virtproof-clusterrole.yaml").read_text(encoding="utf-8")
    return [
        Step("kubevirt-operator", f"{kubectl} apply -f {kv_operator}", retries=3, host=host,
             check=f"{kubectl} -n kubevirt get deployment virt-operator >/dev/null 2>&1"),
        Step("kubevirt-cr", f"{kubectl} apply -f -",
             stdin=yaml.safe_dump(kubevirt_cr(use_emulation, feature_gates), sort_keys=False),
             retries=3, host=host, check=f"{kubectl} -n kubevirt get kubevirt kubevirt >/dev/null 2>&1"),
        Step("kubevirt-available",
             f"{kubectl} -n kubevirt wait kubevirt kubevirt --for condition=Available --timeout=15m",
             retries=1, timeout_s=1000, host=host),
        Step("cdi-operator", f"{kubectl} apply -f {cdi_operator}", retries=3, host=host,
             check=f"{kubectl} -n cdi get deployment cdi-operator >/dev/null 2>&1"),
        Step("cdi-cr", f"{kubectl} apply -f -", stdin=yaml.safe_dump(cdi_cr(), sort_keys=False), retries=3,
             host=host, check=f"{kubectl} get cdi cdi >/dev/null 2>&1"),
        Step("cdi-available", f"{kubectl} wait cdi cdi --for condition=Available --timeout=15m", retries=1,
             timeout_s=1000, host=host),
        Step("virtproof-rbac", f"{kubectl} apply -f -", stdin=rbac, retries=3, host=host),
    ]
