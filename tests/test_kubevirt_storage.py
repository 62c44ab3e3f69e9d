"""DataVolumes sized and placed as CDI needs (issue 12 item 7): size from the disk's virtual size,
access modes where the StorageProfile leaves them open, immediate binding for standalone imports
on WaitForFirstConsumer classes, and CDI's own failure message ending the wait."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt import schema as kubevirt_schema
from virtproof.lab.kubevirt.importer import DiskServer
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.storage import (
    failure_of,
    http_virtual_size,
    profile_defaults,
    request_for,
    virtual_size,
    virtual_size_of,
)
from virtproof.lab.platform import PlatformError

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


def test_cdis_own_message_comes_first_and_unrenderable_claims_fail() -> None:
    # CDI lists Bound, Ready, Running; a fatal import (phase Failed) says why in Running, while
    # Bound says only "PVC x Bound" (pkg/controller/datavolume/conditions.go)
    failed = {"phase": "Failed", "conditions": [
        {"type": "Bound", "status": "True", "reason": "Bound", "message": "PVC d Bound"},
        {"type": "Ready", "status": "False", "reason": "", "message": ""},
        {"type": "Running", "status": "False", "reason": "ChecksumError", "message": "checksum mismatch"}]}
    assert failure_of(failed) == "checksum mismatch"
    # renderPvcSpec's refusal (datavolume/controller-base.go, event ErrClaimNotValid): no phase at all
    unrendered = {"conditions": [
        {"type": "Bound", "status": "False", "reason": "ErrClaimNotValid",
         "message": "no accessMode specified in StorageProfile standard"},
        {"type": "Running", "status": "False", "reason": "", "message": ""}]}
    assert failure_of(unrendered) == "no accessMode specified in StorageProfile standard"
    pulling = {"phase": "ImportInProgress", "conditions": [
        {"type": "Running", "status": "False", "reason": "ImagePullFailed", "message": "Unable to pull image"}]}
    assert failure_of(pulling) == "Unable to pull image"  # KubeVirt's HasDataVolumeErrors reads the same two
    waiting = {"phase": "WaitForFirstConsumer", "conditions": [
        {"type": "Bound", "status": "False", "reason": "Pending", "message": "PVC d Pending"}]}
    assert failure_of(waiting) is None


@pytest.mark.parametrize(("fmt", "virtual"), [("qcow2", 3 * GIB), ("vmdk", 2 * GIB), ("vdi", GIB),
                                              ("vpc", 512 * 1024**2), ("raw", 64 * 1024**2)])
def test_the_virtual_size_of_an_http_image_comes_from_its_header(tmp_path: Path, fmt: str, virtual: int) -> None:
    disk = tmp_path / f"d.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(disk), str(virtual)], check=True)
    expected = virtual_size(disk)  # what qemu-img says (vpc rounds to its CHS geometry)
    server = DiskServer(disk, "127.0.0.1")
    try:
        assert http_virtual_size(server.url) == expected
    finally:
        server.close()
    assert abs(expected - virtual) < 16 * 1024**2


def test_compressed_and_unreachable_http_images_ask_for_a_disk_size(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 4096)
    subprocess.run(["xz", "-k", str(disk)], check=True)
    server = DiskServer(tmp_path / "d.img.xz", "127.0.0.1")
    try:
        with pytest.raises(PlatformError, match=r"xz-compressed: .*set the image.s disk_size"):
            http_virtual_size(server.url)
        with pytest.raises(PlatformError, match=r"HTTP Error 404.*set the image.s disk_size"):
            http_virtual_size(server.url + ".missing")
    finally:
        server.close()
    with pytest.raises(PlatformError, match="gz-compressed"):
        virtual_size_of(b"\x1f\x8b\x08" + b"\0" * 100, 5000, "u")
    with pytest.raises(PlatformError, match="gave no length"):
        virtual_size_of(b"\0" * 512, None, "u")
