"""Sizing and placing DataVolumes the way CDI needs them, from what the cluster says.

- Size: from the image's virtual size (``qemu-img info``), plus CDI's filesystem overhead
  (``filesystemOverhead`` defaults to 5.5% in CDI's CDIConfig) and headroom, never a fixed 1Gi.
- Access and volume mode: CDI's ``spec.storage`` API fills them from the StorageProfile of the
  storage class (``status.claimPropertySets``); for a provisioner CDI does not know (kind's and
  many local-path classes), that list is empty and the DataVolume waits forever with
  "no accessMode specified in StorageProfile". There, ReadWriteOnce / Filesystem are set
  explicitly (pkg/controller/datavolume/util.go ``resolveVolumeMode``/``getDefaultAccessModes`` in CDI).
- WaitForFirstConsumer: a standalone import has no consumer pod, so it asks CDI to bind at once
  (annotation ``cdi.kubevirt.io/storage.bind.immediate.requested``, honoured with
  HonorWaitForFirstConsumer).
- Failures: CDI's own condition message ends the wait (a Running condition False with a reason,
  or importer restarts), instead of waiting out the timeout.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtproof.lab.platform import PlatformError

MIB = 1024 * 1024
FILESYSTEM_OVERHEAD = 0.055
HEADROOM_MIB = 128
IMMEDIATE_BIND = "cdi.kubevirt.io/storage.bind.immediate.requested"
MAX_IMPORTER_RESTARTS = 3


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


def failure_of(status: dict[str, Any]) -> str | None:
    """CDI's own reason a DataVolume will not finish, or None while it may still."""
    if status.get("phase") == "Failed":
        return _condition_message(status) or "phase Failed"
    restarts = int(status.get("restartCount") or 0)
    if restarts >= MAX_IMPORTER_RESTARTS:
        return f"the importer restarted {restarts} times: {_condition_message(status) or 'no message'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Running" and condition.get("status") == "False" and \
                condition.get("reason") in ("Error", "ImportFailed", "TransferFailed"):
            return str(condition.get("message") or condition.get("reason"))
    return None


def _condition_message(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("message"):
            return str(condition["message"])
    return ""
