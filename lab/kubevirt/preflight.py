"""Checks before a run: KubeVirt (and CDI) installed and Available, their versions, the
migration configuration, and this identity's permissions (SelfSubjectAccessReviews).

A missing required permission is one ``PermissionsMissing`` error listing every gap; missing
optional permissions only remove the capabilities that need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt.features import KubeVirtFeatures
from virtproof.lab.kubevirt.resources import CDI, KUBEVIRT, MIGRATION_POLICY, Kube, Obj
from virtproof.lab.platform import Capability, PlatformError


class ClusterNotReady(PlatformError):
    """KubeVirt (or CDI) is missing or not Available."""


class PermissionsMissing(PlatformError):
    """This identity lacks permissions the backend needs; the message lists all of them."""


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespaced: bool = True

    def describe(self, namespace: str) -> str:
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        res = f"{res}.{self.group}" if self.group else res
        where = f" in namespace {namespace}" if self.namespaced else " (cluster-wide)"
        return f"{self.verb} {res}{where}"


def _perms(verbs: str, resource: str, group: str = "", *, sub: str = "", namespaced: bool = True) -> list[Permission]:
    return [Permission(v, resource, group, sub, namespaced) for v in verbs.split()]


KV = "kubevirt.io"
# Every call the backend makes (lab/kubevirt: the suites' calls, cleanup's and inspection's) is
# one of these; tests/test_kubevirt_rbac_calls.py derives the calls from the code and fails on
# one that is missing here or in deploy/rbac.
REQUIRED: tuple[Permission, ...] = tuple(
    _perms("create get list watch delete", "virtualmachines", KV)
    + _perms("get list watch patch delete", "virtualmachineinstances", KV)  # delete: cleanup
    + _perms("create get list watch delete", "virtualmachineinstancemigrations", KV)
    + _perms("create get list delete", "services")
    + _perms("create get list delete", "secrets")
    + _perms("list", "pods")
    + _perms("get list", "kubevirts", KV, namespaced=False)
    + _perms("get list", "nodes", namespaced=False)
)
# list: cleanup and ``lab status`` find the run's labelled namespace
NAMESPACE_PERMS: tuple[Permission, ...] = tuple(_perms("create get list delete", "namespaces", namespaced=False))
OPTIONAL: dict[Capability, tuple[Permission, ...]] = {
    Capability.NODE_DRAIN: tuple(_perms("patch", "nodes", namespaced=False)
                                 + _perms("create", "pods", sub="eviction")),
    Capability.DISK_IMPORT: tuple(_perms("create get list watch delete", "datavolumes", "cdi.kubevirt.io")
                                  + _perms("get list", "cdis", "cdi.kubevirt.io", namespaced=False)
                                  + _perms("get list", "storageprofiles", "cdi.kubevirt.io", namespaced=False)
                                  + _perms("get list", "storageclasses", "storage.k8s.io", namespaced=False)),
    # list: the preflight reads existing policies (allowPostCopy), cleanup finds the run's
    Capability.POST_COPY: tuple(_perms("create get list delete", "migrationpolicies", "migrations.kubevirt.io",
                                       namespaced=False)),
}


def check_permissions(kube: Kube, namespace: str, perms: Iterable[Permission]) -> list[Permission]:
    """The subset of ``perms`` this identity is not allowed (one SSAR each)."""
    missing = []
    for perm in perms:
        attrs = client.V1ResourceAttributes(
            verb=perm.verb, resource=perm.resource, group=perm.group,
            subresource=perm.subresource or None, namespace=namespace if perm.namespaced else None,
        )
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        kube.conn.limiter.acquire()
        result = kube.auth.create_self_subject_access_review(review)
        if not (result.status and result.status.allowed):
            missing.append(perm)
    return missing


def may_get_url(kube: Kube, path: str) -> bool:
    """Whether this identity may GET a non-resource URL such as ``/metrics``."""
    attrs = client.V1NonResourceAttributes(path=path, verb="get")
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(non_resource_attributes=attrs))
    kube.conn.limiter.acquire()
    result = kube.auth.create_self_subject_access_review(review)
    return bool(result.status and result.status.allowed)


def require_permissions(kube: Kube, namespace: str, perms: Sequence[Permission]) -> None:
    missing = check_permissions(kube, namespace, perms)
    if missing:
        listed = "; ".join(p.describe(namespace) for p in missing)
        raise PermissionsMissing(
            f"missing {len(missing)} permission(s): {listed} (see deploy/rbac/virtproof-clusterrole.yaml)"
        )


def _available(obj: Obj) -> bool:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("phase") == "Deployed" and conditions.get("Available") == "True"


@dataclass(frozen=True)
class ClusterFacts:
    kubernetes_version: str
    kubevirt_version: str
    kubevirt_namespace: str
    use_emulation: bool
    migrations: dict[str, Any] = field(default_factory=dict)
    cdi_version: str | None = None
    policies_allow_postcopy: bool = False
    policies_allow_auto_converge: bool = False
    features: KubeVirtFeatures = field(default_factory=lambda: KubeVirtFeatures(None))

    def manifest(self) -> dict[str, str]:
        out = {"kubernetes": self.kubernetes_version, "kubevirt": self.kubevirt_version}
        if self.cdi_version:
            out["cdi"] = self.cdi_version
        return out


def _list_cluster(kube: Kube, res: Any) -> list[Obj]:
    try:
        return kube.list_objects(res)
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise


def inspect_cluster(kube: Kube, require_cdi: bool) -> ClusterFacts:
    """Read versions and configuration; raise ClusterNotReady naming what is missing."""
    kube.conn.limiter.acquire()
    kube_version = kube.version_api.get_code().git_version
    kubevirts = _list_cluster(kube, KUBEVIRT)
    if not kubevirts:
        raise ClusterNotReady("KubeVirt is not installed (no KubeVirt resource in the cluster)")
    kv = kubevirts[0]
    if not _available(kv):
        phase = (kv.get("status") or {}).get("phase") or "unknown"
        raise ClusterNotReady(f"KubeVirt is not Available (phase {phase})")
    kv_status, kv_spec = kv.get("status") or {}, kv.get("spec") or {}
    configuration = kv_spec.get("configuration") or {}
    cdi_version = None
    cdis = _list_cluster(kube, CDI)
    if cdis and _available(cdis[0]):
        cdi_version = str((cdis[0].get("status") or {}).get("observedVersion") or "unknown")
    elif require_cdi:
        raise ClusterNotReady("CDI is not installed or not Available (the scenario needs disk imports)")
    postcopy = autoconv = False
    try:
        for policy in _list_cluster(kube, MIGRATION_POLICY):
            spec = policy.get("spec") or {}
            postcopy = postcopy or bool(spec.get("allowPostCopy"))
            autoconv = autoconv or bool(spec.get("allowAutoConverge"))
    except ApiException as exc:
        if exc.status != 403:
            raise
    return ClusterFacts(
        kubernetes_version=str(kube_version),
        kubevirt_version=str(kv_status.get("observedKubeVirtVersion") or kv_status.get("operatorVersion") or "unknown"),
        kubevirt_namespace=str((kv.get("metadata") or {}).get("namespace") or ""),
        use_emulation=bool((configuration.get("developerConfiguration") or {}).get("useEmulation")),
        migrations=dict(configuration.get("migrations") or {}),
        cdi_version=cdi_version,
        policies_allow_postcopy=postcopy,
        policies_allow_auto_converge=autoconv,
        features=KubeVirtFeatures.from_kubevirt_cr(kv),
    )
