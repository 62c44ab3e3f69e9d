"""DataVolumes sized and placed as CDI needs (issue 12 item 7): size from the disk's virtual size,
access modes where the StorageProfile leaves them open, immediate binding for standalone imports
on WaitForFirstConsumer classes, and CDI's own failure message ending the wait."""

from __future__ import annotations

import subprocess
from pathlib import Path

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt import schema as kubevirt_schema
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.storage import failure_of, profile_defaults, request_for, virtual_size

GIB = 1024**3


def test_the_request_is_sized_from_the_virtual_size(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "5G"], check=True)
    assert virtual_size(disk) == 5 * GIB
    # 5 GiB + 5.5 % filesystem overhead + 128 MiB headroom, in whole MiB
    assert request_for(5 * GIB) == f"{5 * 1024 + 282 + 128}Mi"


def test_access_modes_only_where_the_profile_has_none() -> None:
    unknown = profile_defaults({"status": {"claimPropertySets": []}}, {"volumeBindingMode": "WaitForFirstConsumer"})
    assert unknown.access_modes == ("ReadWriteOnce",) and unknown.volume_mode == "Filesystem"
    assert unknown.binding_mode == "WaitForFirstConsumer"
    known = profile_defaults({"status": {"claimPropertySets": [{"accessModes": ["ReadWriteMany"],
                                                                "volumeMode": "Block"}]}}, None)
    assert known.access_modes == () and known.volume_mode is None and known.binding_mode is None


def test_the_standalone_data_volume_validates_and_asks_for_immediate_binding() -> None:
    source = DiskSource(http_url="http://h/d.img", size="5530Mi", access_modes=("ReadWriteOnce",),
                        volume_mode="Filesystem")
    body = manifests.data_volume("d", "ns", "run1", source, bind_immediately=True)
    assert body["metadata"]["annotations"] == {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}
    assert body["spec"]["storage"]["accessModes"] == ["ReadWriteOnce"]
    assert kubevirt_schema.validate("cdi:v1beta1.DataVolume", body) == []


def test_cdi_failures_end_the_wait_with_cdis_message() -> None:
    assert failure_of({"phase": "ImportInProgress", "restartCount": 1}) is None
    assert failure_of({"phase": "Pending"}) is None
    running_error = {"phase": "ImportInProgress", "conditions": [
        {"type": "Running", "status": "False", "reason": "Error", "message": "Unable to connect to http data source"}]}
    assert failure_of(running_error) == "Unable to connect to http data source"
    restarts = {"phase": "ImportInProgress", "restartCount": 3, "conditions": [{"type": "Bound", "message": "x"}]}
    assert "restarted 3 times" in str(failure_of(restarts))
    assert failure_of({"phase": "Failed"}) == "phase Failed"
