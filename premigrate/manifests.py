"""KubeVirt VirtualMachine + CDI DataVolume for a converted source, validated against the
KubeVirt and CDI OpenAPI documents before they are written (never virt-v2v's ``-o kubevirt``,
whose 2.2 output is an invalid VirtualMachineInstance)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from virtproof.lab.kubevirt.schema import SchemaSet

GIB = 1024**3


class ManifestInvalid(ValueError):
    """The generated manifest does not validate (a virtproof bug); the message lists the errors."""


@dataclass(frozen=True)
class VmShape:
    name: str
    cpus: int
    memory_mib: int
    firmware: Literal["bios", "uefi"]
    disk_bytes: int
    bus: Literal["virtio", "scsi"] = "virtio"
    mac: str | None = None  # kept when asked
    image_url: str | None = None  # where CDI imports the converted disk from; else upload
    secure_boot: bool = False  # UEFI with Secure Boot, as the source had it


def k8s_name(text: str) -> str:
    """A DNS-1123 label from any text (``Debian 12_vmware.ova`` -> ``debian-12-vmware-ova``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name or "vm")[:55].rstrip("-")


def _storage_request(disk_bytes: int) -> str:
    return f"{max(1, -(-disk_bytes // GIB))}Gi"


def data_volume(shape: VmShape, namespace: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"http": {"url": shape.image_url}} if shape.image_url else {"upload": {}}
    meta: dict[str, Any] = {"name": f"{shape.name}-disk0", "labels": {"app.kubernetes.io/managed-by": "virtproof"}}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": meta,
        "spec": {
            "source": source,
            "storage": {"resources": {"requests": {"storage": _storage_request(shape.disk_bytes)}}},
        },
    }


def virtual_machine(shape: VmShape, namespace: str | None = None) -> dict[str, Any]:
    interface: dict[str, Any] = {"name": "default", "masquerade": {}, "model": "virtio"}
    if shape.mac:
        interface["macAddress"] = shape.mac
    # KubeVirt's EFI: OVMF_CODE(.secboot).fd + a per-VMI copy of OVMF_VARS
    # (pkg/virt-launcher/virtwrap/efi/efi.go); Secure Boot is refused by its webhook unless SMM
    # is on (pkg/virt-api/webhooks/validating-webhook/admitters/vmi-create-admitter.go).
    firmware: dict[str, Any] = (
        {"bootloader": {"efi": {"secureBoot": shape.secure_boot}}}
        if shape.firmware == "uefi"
        else {"bootloader": {"bios": {}}}
    )
    features: dict[str, Any] = {"smm": {"enabled": True}} if shape.firmware == "uefi" and shape.secure_boot else {}
    disk_bus = "virtio" if shape.bus == "virtio" else "scsi"
    meta: dict[str, Any] = {"name": shape.name, "labels": {"app.kubernetes.io/managed-by": "virtproof"}}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": meta,
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": shape.name}},
                "spec": {
                    "domain": {
                        "cpu": {"cores": shape.cpus, "sockets": 1, "threads": 1},
                        "memory": {"guest": f"{shape.memory_mib}Mi"},
                        "resources": {"requests": {"memory": f"{shape.memory_mib}Mi"}},
                        "firmware": firmware,
                        **({"features": features} if features else {}),
                        "machine": {"type": "q35"},
                        "devices": {
                            # KubeVirt attaches a VGA device unless this is false
                            # (pkg/virt-launcher/virtwrap/converter/compute/graphics.go); a GRUB
                            # guest does not reach userspace under qemu without one.
                            "autoattachGraphicsDevice": True,
                            "autoattachSerialConsole": True,
                            "disks": [{"name": "rootdisk", "disk": {"bus": disk_bus}, "bootOrder": 1}],
                            "interfaces": [interface],
                            "rng": {},
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "rootdisk", "dataVolume": {"name": f"{shape.name}-disk0"}}],
                },
            },
        },
    }


def build_manifests(shape: VmShape, schemas: SchemaSet, namespace: str | None = None) -> list[dict[str, Any]]:
    """[DataVolume, VirtualMachine], each checked against its schema."""
    dv, vm = data_volume(shape, namespace), virtual_machine(shape, namespace)
    errors = [f"DataVolume {e}" for e in schemas.validate("cdi:v1beta1.DataVolume", dv)]
    errors += [f"VirtualMachine {e}" for e in schemas.validate("kubevirt:v1.VirtualMachine", vm)]
    if errors:
        raise ManifestInvalid("; ".join(errors))
    return [dv, vm]


def write_manifests(objects: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False), encoding="utf-8")
    return path
