"""Sizing and placing DataVolumes the way CDI needs them, from what the cluster says.

- Size: from the image's virtual size (``qemu-img info`` of a local disk; for an ``http`` image
  the header CDI itself reads, fetched with a ranged GET: ``http_virtual_size``), plus CDI's
  filesystem overhead (``filesystemOverhead`` defaults to 5.5% in CDI's CDIConfig) and headroom,
  never a fixed 1Gi (a 2-10 GiB cloud image in 1Gi fails with CDI's "DataVolume too small to
  contain image").
- Access and volume mode: CDI's ``spec.storage`` API fills them from the StorageProfile of the
  storage class (``status.claimPropertySets``); for a provisioner CDI does not know (kind's and
  many local-path classes), that list is empty and the DataVolume waits forever with
  "no accessMode specified in StorageProfile". There, ReadWriteOnce / Filesystem are set
  explicitly (pkg/controller/datavolume/util.go ``resolveVolumeMode``/``getDefaultAccessModes`` in CDI).
- WaitForFirstConsumer: a standalone import has no consumer pod, so it asks CDI to bind at once
  (annotation ``cdi.kubevirt.io/storage.bind.immediate.requested``, honoured with
  HonorWaitForFirstConsumer).
- Failures: CDI's own condition message ends the wait (a Running condition False with a reason,
  importer restarts, a claim CDI cannot render), instead of waiting out the timeout; the same
  for a VM's ``dataVolumeTemplates`` (``importer.watch_templates``).
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtproof.lab.platform import PlatformError

MIB = 1024 * 1024
FILESYSTEM_OVERHEAD = 0.055
HEADROOM_MIB = 128
IMMEDIATE_BIND = "cdi.kubevirt.io/storage.bind.immediate.requested"
MAX_IMPORTER_RESTARTS = 3
HEAD_BYTES = 1 << 20  # what http_virtual_size reads of an image: its header, never the image

# How CDI v1.66 tells formats apart: the magic numbers of pkg/image/filefmt.go (knownHeaders).
# Compressed images (gz, xz, zst) carry no virtual size in their header: CDI learns it only
# after decompressing, so their DataVolume size must be given (``lab.images.NAME.disk_size``).
_COMPRESSED = {b"\x1f\x8b": "gz", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zst"}


def virtual_size(disk: Path) -> int:
    """The disk image's virtual size in bytes (format probed by qemu-img, read-only)."""
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PlatformError(f"cannot read the size of {disk}: {exc}") from None
    return int(json.loads(out)["virtual-size"])


def request_for(virtual_bytes: int) -> str:
    """The PVC request (``"NNNMi"``) a disk of ``virtual_bytes`` needs in a Filesystem volume."""
    mib = math.ceil(virtual_bytes * (1 + FILESYSTEM_OVERHEAD) / MIB) + HEADROOM_MIB
    return f"{mib}Mi"


@dataclass(frozen=True)
class StorageDefaults:
    """What the StorageProfile of a class leaves to us."""

    access_modes: tuple[str, ...]
    volume_mode: str | None
    binding_mode: str | None  # the StorageClass's volumeBindingMode


def profile_defaults(profile: dict[str, Any] | None, storage_class: dict[str, Any] | None) -> StorageDefaults:
    """Access/volume mode to set explicitly (empty when CDI's profile knows them)."""
    binding = str((storage_class or {}).get("volumeBindingMode") or "") or None
    claims = ((profile or {}).get("status") or {}).get("claimPropertySets") or []
    if claims and (claims[0].get("accessModes") or []):
        return StorageDefaults((), None, binding)
    return StorageDefaults(("ReadWriteOnce",), "Filesystem", binding)


# Running-condition reasons of an importer that stopped on an error: the container's terminated
# reason ("Error") or CDI's image-pull reason (pkg/controller/util.go setAnnotationsFromPodWithPrefix),
# the same two KubeVirt v1.9 reads as a DataVolume error (pkg/storage/types/dv.go HasDataVolumeErrors).
_RUNNING_ERRORS = ("Error", "ImagePullFailed", "ImportFailed", "TransferFailed")
# Bound-condition reasons that no retry cures: CDI could not render the claim (no access mode in
# the StorageProfile, no StorageClass: pkg/controller/datavolume/controller-base.go renderPvcSpec,
# event ErrClaimNotValid), or the namespace's quota refuses it.
_CLAIM_ERRORS = ("ErrClaimNotValid", "ErrExceededQuota")


def failure_of(status: dict[str, Any]) -> str | None:
    """CDI's own reason a DataVolume will not finish, or None while it may still.

    CDI v1.66 keeps a failing http import in phase ImportInProgress (only a fatal error, e.g. a
    checksum mismatch, sets phase Failed: pkg/controller/datavolume/import-controller.go
    updateStatusPhase), counts the importer's restarts in ``restartCount`` and sets the Running
    condition False with the importer's termination message (pkg/controller/datavolume/conditions.go
    updateRunningCondition)."""
    if status.get("phase") == "Failed":
        return _condition_message(status) or "phase Failed"
    restarts = int(status.get("restartCount") or 0)
    if restarts >= MAX_IMPORTER_RESTARTS:
        return f"the importer restarted {restarts} times: {_condition_message(status) or 'no message'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Running" and condition.get("status") == "False" and \
                condition.get("reason") in _RUNNING_ERRORS:
            return str(condition.get("message") or condition.get("reason"))
        if condition.get("type") == "Bound" and condition.get("status") != "True" and \
                condition.get("reason") in _CLAIM_ERRORS:
            return str(condition.get("message") or condition.get("reason"))
    return None


def _condition_message(status: dict[str, Any]) -> str:
    """The message of the condition that is not True, the Running one first (CDI lists Bound,
    Ready, Running in that order, and a bound claim says only "PVC x Bound")."""
    conditions = status.get("conditions") or []
    ordered = sorted(conditions, key=lambda c: (c.get("type") != "Running", c.get("status") == "True"))
    for condition in ordered:
        if condition.get("message") and condition.get("status") != "True":
            return str(condition["message"])
    return ""


def http_virtual_size(url: str, timeout: float = 30.0) -> int:
    """The virtual size in bytes of the disk image at ``url``, from its first MiB (a ranged GET,
    the rest never downloaded) and its length; PlatformError when it cannot be told.

    The header fields are those of the formats CDI v1.66 recognises (pkg/image/filefmt.go): qcow2
    (size at offset 24, big-endian), VMDK sparse (capacity in sectors at 12), VDI (size at 368),
    VHD (the footer's copy at the start: current size at 48); any other image is raw (an ISO
    too), its virtual size is its length."""
    request = urllib.request.Request(url, headers={"Range": f"bytes=0-{HEAD_BYTES - 1}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            head = response.read(HEAD_BYTES)
            total = _total_length(response.status, response.headers.get("Content-Range"),
                                  response.headers.get("Content-Length"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PlatformError(f"cannot read the header of {url}: {exc}; set the image's disk_size") from None
    return virtual_size_of(head, total, url)


def _total_length(status: int, content_range: str | None, content_length: str | None) -> int | None:
    if status == 206 and content_range:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", content_range.strip())
        return int(match.group(1)) if match else None
    return int(content_length) if status == 200 and content_length and content_length.isdigit() else None


def virtual_size_of(head: bytes, total: int | None, what: str) -> int:
    """The virtual size from an image's first bytes (see ``http_virtual_size``)."""
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            raise PlatformError(f"{what} is {name}-compressed: its virtual size is not in its header; "
                                "set the image's disk_size")
    if head[:4] == b"QFI\xfb" and len(head) >= 32:
        return int(struct.unpack(">Q", head[24:32])[0])
    if head[:4] == b"KDMV" and len(head) >= 20:
        return int(struct.unpack("<Q", head[12:20])[0]) * 512
    if head[64:68] == b"\x7f\x10\xda\xbe" and len(head) >= 376:
        return int(struct.unpack("<Q", head[368:376])[0])
    if head[:8] == b"conectix" and len(head) >= 56:
        return int(struct.unpack(">Q", head[48:56])[0])
    if head[:8] == b"vhdxfile":
        raise PlatformError(f"{what} is a VHDX image (its size is not in the first header); set the image's disk_size")
    if total is None:
        raise PlatformError(f"{what} looks raw but its server gave no length; set the image's disk_size")
    return total
