"""Find and delete what virtproof created: only objects labelled ``virtproof.io/run-id``.

``leftovers`` lists labelled objects (of one run, or of any) across the cluster, or only in
``namespace`` when the identity has a namespaced Role (deploy/rbac/virtproof-role.yaml); ``clean``
deletes them. Unlabelled objects are never touched, also in a shared namespace; a namespace is
deleted only when it carries the label itself (virtproof made it). What this identity may not
list (403) it cannot have created, so it is passed over rather than failing the cleanup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt.resources import (
    DATAVOLUME,
    MIGRATION_POLICY,
    RUN_LABEL,
    VM,
    VMI,
    VMIM,
    Kube,
    Obj,
    Resource,
)

log = logging.getLogger("virtproof.lab.kubevirt")
T = TypeVar("T")

# Deletion order: migrations first (cancel), then VMs (their VMIs and DataVolumes follow).
_NAMESPACED: tuple[Resource, ...] = (VMIM, VM, VMI, DATAVOLUME)


@dataclass(frozen=True)
class Leftover:
    kind: str
    namespace: str
    name: str
    run_id: str
    # Being deleted already (metadata.deletionTimestamp): a VM, VMI or Namespace stays until its
    # finalizers are done (virt-controller's kubevirt.io/virtualMachineControllerFinalize, the
    # namespace controller's kubernetes finalizer), which the real server shows for seconds.
    terminating: bool = False

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} (run {self.run_id})" + (" (being deleted)" if self.terminating else "")


def _selector(run_id: str | None) -> str:
    return f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL


def _allowed(call: Callable[[], list[T]]) -> list[T]:
    """``call()``, or nothing where the resource is not installed (404) or not ours to see (403)."""
    try:
        return call()
    except ApiException as exc:
        if exc.status in (403, 404):
            return []
        raise


def leftovers(kube: Kube, run_id: str | None = None, namespace: str | None = None) -> list[Leftover]:
    """Every object carrying the run label (of ``run_id``, or of any run), cluster-wide or in ``namespace``."""
    selector = _selector(run_id)
    found: list[Leftover] = []
    def objects(res: Resource, where: str | None) -> Callable[[], list[Obj]]:
        return lambda: kube.list_objects(res, where, selector)

    for res in _NAMESPACED:
        for item in _allowed(objects(res, namespace)):
            meta = item.get("metadata") or {}
            found.append(Leftover(res.kind, str(meta.get("namespace") or ""), str(meta.get("name")),
                                  str((meta.get("labels") or {}).get(RUN_LABEL, "")),
                                  bool(meta.get("deletionTimestamp"))))
    for item in _allowed(objects(MIGRATION_POLICY, None)):
        meta = item.get("metadata") or {}
        found.append(Leftover(MIGRATION_POLICY.kind, "", str(meta.get("name")),
                              str((meta.get("labels") or {}).get(RUN_LABEL, "")), bool(meta.get("deletionTimestamp"))))

    def services() -> list[Any]:
        kube.conn.limiter.acquire()
        if namespace:
            return list(kube.core.list_namespaced_service(namespace, label_selector=selector).items)
        return list(kube.core.list_service_for_all_namespaces(label_selector=selector).items)

    def namespaces() -> list[Any]:
        kube.conn.limiter.acquire()
        return list(kube.core.list_namespace(label_selector=selector).items)

    def secrets() -> list[Any]:
        kube.conn.limiter.acquire()
        if namespace:
            return list(kube.core.list_namespaced_secret(namespace, label_selector=selector).items)
        return list(kube.core.list_secret_for_all_namespaces(label_selector=selector).items)

    for kind, items in (("Service", _allowed(services)), ("Secret", _allowed(secrets))):
        for obj in items:
            meta = obj.metadata
            if meta is not None:
                found.append(Leftover(kind, str(meta.namespace), str(meta.name),
                                      str((meta.labels or {}).get(RUN_LABEL, "")), meta.deletion_timestamp is not None))
    for ns in _allowed(namespaces):
        meta = ns.metadata
        if meta is not None:
            found.append(Leftover("Namespace", "", str(meta.name), str((meta.labels or {}).get(RUN_LABEL, "")),
                                  meta.deletion_timestamp is not None))
    return found


def clean(kube: Kube, run_id: str | None = None, namespace: str | None = None) -> list[str]:
    """Delete every labelled object (of ``run_id``, or of all runs); return what was deleted.
    Objects already being deleted are left to their finalizers (not deleted, nor listed, again)."""
    deleted: list[str] = []
    by_kind = {res.kind: res for res in (*_NAMESPACED, MIGRATION_POLICY)}
    for item in leftovers(kube, run_id, namespace):
        if item.terminating:
            continue
        try:
            if item.kind in by_kind:
                res = by_kind[item.kind]
                gone = kube.delete(res, item.name, item.namespace or None)
            elif item.kind == "Service":
                kube.conn.limiter.acquire()
                kube.core.delete_namespaced_service(item.name, item.namespace)
                gone = True
            elif item.kind == "Secret":
                kube.conn.limiter.acquire()
                kube.core.delete_namespaced_secret(item.name, item.namespace)
                gone = True
            else:
                kube.conn.limiter.acquire()
                kube.core.delete_namespace(item.name)
                gone = True
        except ApiException as exc:
            if exc.status != 404:
                raise
            gone = False
        if gone:
            deleted.append(str(item))
            log.info("deleted %s", item)
    return deleted
