"""Objects the backend sends: VirtualMachine, Service, migration, MigrationPolicy, DataVolume.

Every builder returns a plain dict that validates against the KubeVirt/CDI OpenAPI schema (the
tests check each builder with ``virtproof.lab.kubevirt.schema``), and labels it with the run id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from virtproof.lab.kubevirt.features import post_copy_completion_timeout_per_gib
from virtproof.lab.kubevirt.resources import DATAVOLUME, MIGRATION_POLICY, RUN_LABEL, VM, VM_LABEL, VMIM
from virtproof.lab.platform import MigrationPolicy, PlatformError, VMSpec

Obj = dict[str, Any]

SSH_PORT = 22
HTTP_PORT = 80
POLICY_LABEL = "virtproof.io/migration-policy"
HOSTNAME_LABEL = "kubernetes.io/hostname"
_DISK_BUSES = {"virtio", "scsi", "sata"}
_NIC_MODELS = {"virtio", "e1000"}


class UnsupportedSpec(PlatformError):
    """A VMSpec asks for something KubeVirt cannot express (e.g. an IDE disk, a vmxnet3 NIC)."""


@dataclass(frozen=True)
class DiskSource:
    """Where the root disk comes from: a containerDisk image, an http URL CDI imports, or a DataVolume."""

    container_disk: str | None = None
    http_url: str | None = None
    data_volume: str | None = None  # an existing (imported) DataVolume
    # The DataVolume's request; None: from the image's virtual size (storage.request_for), which
    # the backend fills in before building (importer.template_source); never a fixed guess.
    size: str | None = None
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ()  # set only where the StorageProfile leaves them open (storage.py)
    volume_mode: str | None = None


@dataclass(frozen=True)
class CloudInit:
    """What cloud-init puts into the guest: the run's client key, a pinned host key, and the
    files a stock cloud image lacks (``write_files`` entries: the workloads vp-memcheck and
    vp-dirty, from ``virtproof.lab.images.cloudinit.workload_files``)."""

    user: str
    authorized_key: str
    host_private_key: str
    host_public_key: str
    files: tuple[Mapping[str, str], ...] = ()


def labels(run_id: str, **extra: str) -> dict[str, str]:
    return {RUN_LABEL: run_id, **extra}


def cloud_init_user_data(ci: CloudInit) -> str:
    """#cloud-config: authorize the run's key, pin the host key, write the workloads' files,
    start the HTTP responder."""
    responder = (
        "mkdir -p /srv/virtproof && hostname > /srv/virtproof/index.html && "
        f"if command -v busybox >/dev/null; then setsid busybox httpd -p {HTTP_PORT} -h /srv/virtproof; "
        f"else setsid python3 -m http.server {HTTP_PORT} -d /srv/virtproof >/dev/null 2>&1 & fi"
    )
    doc: Obj = {
        "users": ["default", {"name": ci.user, "ssh_authorized_keys": [ci.authorized_key],
                              "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True}],
        "ssh_authorized_keys": [ci.authorized_key],
        "ssh_deletekeys": True,
        "ssh_keys": {"ed25519_private": ci.host_private_key, "ed25519_public": ci.host_public_key},
    }
    if ci.files:
        # cloud-init's write_files module (cc_write_files: path, content, encoding gz+b64 or
        # text, owner, permissions as an octal string) runs before runcmd.
        doc["write_files"] = [dict(f) for f in ci.files]
    doc["runcmd"] = [["sh", "-c", responder]]
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_UserDataDumper, sort_keys=False)


class _UserDataDumper(yaml.SafeDumper):
    """Scripts in the user-data as literal blocks (readable in the Secret and in a plan)."""


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_UserDataDumper.add_representer(str, _literal)


def data_volume_spec(source: DiskSource) -> Obj:
    if source.size is None:
        raise UnsupportedSpec(f"the DataVolume for {source.http_url} has no size (the backend sizes it from the "
                              "image's virtual size first; set the image's disk_size where it cannot)")
    storage: Obj = {"resources": {"requests": {"storage": source.size}}}
    if source.storage_class:
        storage["storageClassName"] = source.storage_class
    if source.access_modes:
        storage["accessModes"] = list(source.access_modes)
    if source.volume_mode:
        storage["volumeMode"] = source.volume_mode
    return {"source": {"http": {"url": source.http_url}}, "storage": storage}


def virtual_machine(spec: VMSpec, namespace: str, run_id: str, source: DiskSource,
                    cloud_init: CloudInit | None, run_strategy: str = "Always") -> Obj:
    """A VirtualMachine for ``spec``; raises UnsupportedSpec for what KubeVirt cannot do."""
    if spec.disk_bus not in _DISK_BUSES:
        raise UnsupportedSpec(f"KubeVirt has no {spec.disk_bus} disk bus (has: {', '.join(sorted(_DISK_BUSES))})")
    if spec.nic_model not in _NIC_MODELS:
        raise UnsupportedSpec(f"KubeVirt has no {spec.nic_model} NIC model (has: {', '.join(sorted(_NIC_MODELS))})")
    if sum(x is not None for x in (source.container_disk, source.http_url, source.data_volume)) != 1:
        raise UnsupportedSpec("a disk source needs exactly one of container_disk, http_url or data_volume")
    meta_labels = labels(run_id, **{VM_LABEL: spec.name}, **dict(spec.labels))
    memory = f"{spec.memory_mib}Mi"
    disks: list[Obj] = [{"name": "rootdisk", "disk": {"bus": spec.disk_bus}, "bootOrder": 1}]
    volumes: list[Obj] = []
    templates: list[Obj] = []
    if source.container_disk:
        volumes.append({"name": "rootdisk", "containerDisk": {"image": source.container_disk}})
    elif source.data_volume:
        volumes.append({"name": "rootdisk", "dataVolume": {"name": source.data_volume}})
    else:
        dv_name = f"{spec.name}-root"
        volumes.append({"name": "rootdisk", "dataVolume": {"name": dv_name}})
        templates.append({"metadata": {"name": dv_name, "labels": labels(run_id, **{VM_LABEL: spec.name})},
                          "spec": data_volume_spec(source)})
    if spec.scratch_disk_mib:
        disks.append({"name": "scratch", "disk": {"bus": spec.disk_bus}})
        volumes.append({"name": "scratch", "emptyDisk": {"capacity": f"{spec.scratch_disk_mib}Mi"}})
    if cloud_init is not None:
        disks.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
        # The user-data carries the pinned host's private key: it lives in a Secret, never inline
        # in the VM object everybody who can read VMs sees.
        volumes.append({"name": "cloudinitdisk",
                        "cloudInitNoCloud": {"secretRef": {"name": cloud_init_secret_name(spec.name)}}})
    template_spec: Obj = {
        "domain": {
            "cpu": {"cores": spec.cpus},
            "memory": {"guest": memory},
            "resources": {"requests": {"memory": memory}},
            "devices": {
                "disks": disks,
                "interfaces": [{"name": "default", "masquerade": {}, "model": spec.nic_model}],
                "rng": {},
            },
        },
        "networks": [{"name": "default", "pod": {}}],
        "evictionStrategy": "LiveMigrate",
        "terminationGracePeriodSeconds": 0,
        "volumes": volumes,
    }
    if spec.node:
        # A preference, not a nodeSelector: KubeVirt copies the VMI's nodeSelector and required
        # affinity into the migration target pod, which must land on another node
        # (virt-controller pkg/virt-controller/services/template.go renderLaunchManifest and
        # watch/migration/migration.go createTargetPod), so a hard pin makes the VM unmovable.
        template_spec["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [spec.node]}]}}]}}
    body: Obj = {
        "apiVersion": VM.api_version,
        "kind": VM.kind,
        "metadata": {"name": spec.name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "runStrategy": run_strategy,
            "template": {"metadata": {"labels": dict(meta_labels)}, "spec": template_spec},
        },
    }
    if templates:
        body["spec"]["dataVolumeTemplates"] = templates
    return body


def cloud_init_secret_name(vm_name: str) -> str:
    return f"{vm_name}-cloudinit"[:253]


def cloud_init_secret(vm_name: str, namespace: str, run_id: str, cloud_init: CloudInit) -> Obj:
    """The Secret the VM's ``cloudInitNoCloud.secretRef`` names; KubeVirt reads its ``userdata`` key
    (pkg/cloud-init/cloud-init.go ``readFirstFoundFileFromDir(..., "userdata", "userData")``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": cloud_init_secret_name(vm_name), "namespace": namespace,
                     "labels": labels(run_id, **{VM_LABEL: vm_name})},
        "type": "Opaque",
        "stringData": {"userdata": cloud_init_user_data(cloud_init)},
    }


def guest_service(vm_name: str, namespace: str, run_id: str) -> Obj:
    """A NodePort Service reaching the VM's SSH and HTTP (virt-launcher pods carry template labels)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{vm_name}-guest", "namespace": namespace,
                     "labels": labels(run_id, **{VM_LABEL: vm_name})},
        "spec": {
            "type": "NodePort",
            "selector": {VM_LABEL: vm_name, RUN_LABEL: run_id},
            "ports": [
                {"name": "ssh", "port": SSH_PORT, "targetPort": SSH_PORT, "protocol": "TCP"},
                {"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"},
            ],
        },
    }


def namespace(name: str, run_id: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels(run_id)}}


def migration(name: str, vmi_name: str, namespace: str, run_id: str, target_node: str | None) -> Obj:
    """A VirtualMachineInstanceMigration; ``target_node`` only where the release has
    ``addedNodeSelector`` (v1.6+: ``features.KubeVirtFeatures.added_node_selector``)."""
    spec: Obj = {"vmiName": vmi_name}
    if target_node:
        spec["addedNodeSelector"] = {HOSTNAME_LABEL: target_node}
    return {
        "apiVersion": VMIM.api_version,
        "kind": VMIM.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels(run_id, **{VM_LABEL: vmi_name})},
        "spec": spec,
    }


def policy_name(run_id: str, policy: MigrationPolicy) -> str:
    parts = [policy.mode.replace("_", "-")]
    if policy.bandwidth_mibps:
        parts.append(f"bw{policy.bandwidth_mibps}")
    if policy.downtime_limit_ms:
        parts.append(f"dt{policy.downtime_limit_ms}")
    return f"virtproof-{run_id}-{'-'.join(parts)}".lower()[:63].rstrip("-")


def migration_policy(run_id: str, policy: MigrationPolicy) -> Obj | None:
    """A MigrationPolicy selecting VMIs labelled with its name; None for a plain pre-copy.

    Post-copy: KubeVirt switches only once ``completionTimeoutPerGiB`` x the guest's GiB has
    passed (default 150 s/GiB), so the policy sets it to switch after about a second per GiB;
    without it a "post-copy" run of a small guest is a pre-copy run (see ``features``)."""
    if policy.mode == "precopy" and not policy.bandwidth_mibps and not policy.downtime_limit_ms:
        return None
    name = policy_name(run_id, policy)
    spec: Obj = {"selectors": {"virtualMachineInstanceSelector": {POLICY_LABEL: name}}}
    if policy.mode == "postcopy":
        spec["allowPostCopy"] = True
        spec["completionTimeoutPerGiB"] = post_copy_completion_timeout_per_gib()
    if policy.mode == "auto_converge":
        spec["allowAutoConverge"] = True
    if policy.bandwidth_mibps:
        spec["bandwidthPerMigration"] = f"{policy.bandwidth_mibps}Mi"
    if policy.downtime_limit_ms:
        spec["maxDowntimeMs"] = policy.downtime_limit_ms
    return {
        "apiVersion": MIGRATION_POLICY.api_version,
        "kind": MIGRATION_POLICY.kind,
        "metadata": {"name": name, "labels": labels(run_id)},
        "spec": spec,
    }


def data_volume(name: str, namespace: str, run_id: str, source: DiskSource, bind_immediately: bool = False) -> Obj:
    """A standalone DataVolume; ``bind_immediately`` for a WaitForFirstConsumer class (no consumer pod)."""
    meta: Obj = {"name": name, "namespace": namespace, "labels": labels(run_id)}
    if bind_immediately:
        meta["annotations"] = {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}
    return {
        "apiVersion": DATAVOLUME.api_version,
        "kind": DATAVOLUME.kind,
        "metadata": meta,
        "spec": data_volume_spec(source),
    }


def eviction(pod: str, namespace: str) -> Obj:
    return {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
