"""The API resources the backend uses, and a rate-limited client for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt.connect import Connection

RUN_LABEL = "virtproof.io/run-id"
VM_LABEL = "virtproof.io/vm"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    schema: str | None = None  # the OpenAPI definition objects of this kind validate against

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


VM = Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine", schema="v1.VirtualMachine")
VMI = Resource("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance",
               schema="v1.VirtualMachineInstance")
VMIM = Resource("kubevirt.io", "v1", "virtualmachineinstancemigrations",
                "VirtualMachineInstanceMigration", schema="v1.VirtualMachineInstanceMigration")
KUBEVIRT = Resource("kubevirt.io", "v1", "kubevirts", "KubeVirt", schema="v1.KubeVirt")
MIGRATION_POLICY = Resource("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", "MigrationPolicy",
                            namespaced=False, schema="v1alpha1.MigrationPolicy")
DATAVOLUME = Resource("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume", schema="v1beta1.DataVolume")
CDI = Resource("cdi.kubevirt.io", "v1beta1", "cdis", "CDI", namespaced=False, schema="v1beta1.CDI")
STORAGE_PROFILE = Resource("cdi.kubevirt.io", "v1beta1", "storageprofiles", "StorageProfile", namespaced=False,
                           schema="v1beta1.StorageProfile")

CUSTOM = (VM, VMI, VMIM, KUBEVIRT, MIGRATION_POLICY, DATAVOLUME, CDI)

Obj = dict[str, Any]


def is_not_found(exc: ApiException) -> bool:
    return bool(exc.status == 404)


class Kube:
    """Thin, rate-limited access to the objects the backend touches (dicts, not models)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.custom = client.CustomObjectsApi(conn.api)
        self.core = client.CoreV1Api(conn.api)
        self.auth = client.AuthorizationV1Api(conn.api)
        self.version_api = client.VersionApi(conn.api)

    def _wait(self) -> None:
        self.conn.limiter.acquire()

    # custom objects ---------------------------------------------------------------------
    def create(self, res: Resource, body: Obj, namespace: str | None = None, *, dry_run: bool = False) -> Obj:
        """Create ``body``; with ``dry_run`` the server validates and admits it (its own schema, its
        webhooks) and stores nothing."""
        self._wait()
        mode = "All" if dry_run else None
        if res.namespaced:
            out = self.custom.create_namespaced_custom_object(res.group, res.version, namespace or "", res.plural,
                                                              body, dry_run=mode)
        else:
            out = self.custom.create_cluster_custom_object(res.group, res.version, res.plural, body, dry_run=mode)
        return cast(Obj, out)

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
        self._wait()
        try:
            if res.namespaced:
                out = self.custom.get_namespaced_custom_object(
                    res.group, res.version, namespace or "", res.plural, name)
            else:
                out = self.custom.get_cluster_custom_object(res.group, res.version, res.plural, name)
        except ApiException as exc:
            if is_not_found(exc):
                return None
            raise
        return cast(Obj, out)

    def list_objects(self, res: Resource, namespace: str | None = None, label_selector: str = "") -> list[Obj]:
        self._wait()
        if res.namespaced and namespace:
            out = self.custom.list_namespaced_custom_object(res.group, res.version, namespace, res.plural,
                                                            label_selector=label_selector)
        else:
            out = self.custom.list_cluster_custom_object(res.group, res.version, res.plural,
                                                         label_selector=label_selector)
        return list(cast(Obj, out).get("items") or [])

    def delete(self, res: Resource, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        self._wait()
        try:
            if res.namespaced:
                self.custom.delete_namespaced_custom_object(res.group, res.version, namespace or "", res.plural, name)
            else:
                self.custom.delete_cluster_custom_object(res.group, res.version, res.plural, name)
        except ApiException as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    def list_with_version(self, res: Resource, namespace: str, label_selector: str) -> tuple[list[Obj], str]:
        self._wait()
        out = cast(Obj, self.custom.list_namespaced_custom_object(
            res.group, res.version, namespace, res.plural, label_selector=label_selector))
        return list(out.get("items") or []), str((out.get("metadata") or {}).get("resourceVersion", ""))
