"""The KubeVirt backend's disk import (CDI DataVolumes) against the fake API server.

CDI is not part of the sim-kubevirt lab: the control-plane build has no CDI components (the
operator, its controller and importer need a container runtime to run the importer pod), so
DataVolumes have nobody to fill them there. Everything else the backend does is tested on the
real control plane (``test_kubevirt_backend.py``); these stay on ``tests/fakekube`` until CDI
runs in a lab.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.lab.clusters.handle import KubeVirtLabHandle
from virtproof.lab.kubevirt import cleanup, manifests
from virtproof.lab.kubevirt.config import ImageConfig
from virtproof.lab.kubevirt.importer import DiskServer, import_disk
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.kubevirt.resources import DATAVOLUME
from virtproof.lab.kubevirt.storage import failure_of, request_for
from virtproof.lab.platform import PlatformError, VMSpec
from virtproof.scenarios.model import parse_scenario

from fakekube import FakeCluster
from fakekube.fixtures import open_platform


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as c:
        yield c


def test_disk_import_serves_the_file_and_cdi_downloads_it(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.controller.download_dir = tmp_path
    p = open_platform(cluster, tmp_path / "state")
    disk = tmp_path / "converted.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)  # a real image
    try:
        result = import_disk(p, disk, "probe", advertise="127.0.0.1", bind_address="127.0.0.1", timeout=30)
        assert result.phase == "Succeeded" and result.progress == "100.0%"
        assert (tmp_path / f"{p.namespace}-probe.img").read_bytes() == disk.read_bytes()
        image = p.import_disk(disk, "imported", advertise="127.0.0.1", timeout=30)
        vm = p.create_vm(VMSpec(name="from-dv", image=image))
        p.wait_running(vm, 20)
        vols = cluster.store.get("kubevirt.io/v1/virtualmachineinstances", p.namespace, "from-dv")["spec"]["volumes"]
        assert vols[0] == {"name": "rootdisk", "dataVolume": {"name": "imported"}}
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()


def test_http_image_goes_through_a_data_volume_template(cluster: FakeCluster, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"x" * 100_000)
    server = DiskServer(disk, "127.0.0.1")
    image = ImageConfig(DiskSource(http_url=server.url, size="1Gi"), user="fedora")
    p = open_platform(cluster, tmp_path / "s", images={"micro": image})
    try:
        vm = p.create_vm(VMSpec(name="dvt"))
        p.wait_running(vm, 20)
        dv = cluster.store.get("cdi.kubevirt.io/v1beta1/datavolumes", p.namespace, "dvt-root")
        assert dv["status"]["phase"] == "Succeeded"
        assert vm.timeline.get("vm_provisioning") is not None
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        server.close()


# -- lab.images http images: the VM's dataVolumeTemplates (issue 12 item 7) -------------------
# The fake CDI follows CDI v1.66's own shapes (tests/fakekube/controller.py _dv_changed): a claim
# without access modes on a class whose StorageProfile has none is refused with Bound/Ready
# reason ErrClaimNotValid "no accessMode specified in StorageProfile standard"
# (pkg/controller/datavolume/util.go getDefaultVolumeAndAccessMode); a failing importer leaves the
# DataVolume ImportInProgress with the Running condition False, reason "Error" and the importer's
# termination message, and restartCount counting (pkg/controller/util.go
# setAnnotationsFromPodWithPrefix, datavolume/conditions.go); a disk bigger than the claim's
# usable space fails with "DataVolume too small to contain image" (pkg/image/qemu.go Validate,
# simplified by pkg/controller/util.go simplifyKnownMessage).

KUBEVIRT_SCENARIO = """name: http-image
lab:
  kind: existing
  kubeconfig: {kubeconfig}
  qps: 500
  burst: 500
  images:
    cloud: {{http: "{url}", user: debian{size}}}
guest: {{image: cloud, memory: 256Mi}}
suites: {{boot: {{count: 1}}}}
"""


def _qcow2(path: Path, virtual: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), virtual], check=True)
    return path


def _attach(cluster: FakeCluster, url: str, lab_id: str, size: str = "") -> KubeVirtPlatform:
    text = KUBEVIRT_SCENARIO.format(kubeconfig=cluster.kubeconfig, url=url,
                                    size=f", disk_size: {size}" if size else "")
    return KubeVirtLabHandle(parse_scenario(text), lab_id).attach()


def test_an_http_image_template_is_sized_from_the_image_with_the_profiles_access_modes(
        cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 3 GiB (virtual) image: the scenario's old default of 1Gi failed CDI's size check, and
    # a template without access modes was never rendered on kind's local-path class.
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "state"))
    server = DiskServer(_qcow2(tmp_path / "cloud.qcow2", "3G"), "127.0.0.1")
    p = _attach(cluster, server.url, "t1")
    try:
        vm = p.create_vm(VMSpec(name="sized", image="cloud"))
        p.wait_running(vm, 30)
        template = p.manifest_for(VMSpec(name="sized", image="cloud"))["spec"]["dataVolumeTemplates"][0]
        dv = cluster.store.get("cdi.kubevirt.io/v1beta1/datavolumes", p.namespace, "sized-root")
        storage = dv["spec"]["storage"]
        assert storage == template["spec"]["storage"]
        # 3 GiB + CDI's 5.5 % filesystem overhead + 128 MiB headroom
        assert storage["resources"]["requests"]["storage"] == request_for(3 * 1024**3) == "3369Mi"
        assert storage["accessModes"] == ["ReadWriteOnce"] and storage["volumeMode"] == "Filesystem"
        assert "storageClassName" not in storage  # the default class, whose profile is empty
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        server.close()


def test_a_failing_template_import_ends_the_wait_with_cdis_message(cluster: FakeCluster, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "state"))
    server = DiskServer(_qcow2(tmp_path / "cloud.qcow2", "3G"), "127.0.0.1")
    gone = server.url.rsplit("/", 1)[0] + "/not-there.qcow2"  # the importer gets a 404
    p = _attach(cluster, gone, "t1", size="4Gi")  # a given size: nothing reads the URL before CDI
    try:
        vm = p.create_vm(VMSpec(name="broken", image="cloud"))
        started = time.monotonic()
        with pytest.raises(PlatformError) as err:
            p.wait_running(vm, 120)
        assert time.monotonic() - started < 20  # CDI's message, not the 120 s timeout
        assert "DataVolume broken-root import failed: Unable to connect to http data source: " \
               "expected status code 200, got 404. Status: 404 Not Found" in str(err.value)
        status = cluster.store.get("cdi.kubevirt.io/v1beta1/datavolumes", p.namespace, "broken-root")["status"]
        assert status["phase"] == "ImportInProgress"  # CDI retries; only a fatal error sets Failed
        running = next(c for c in status["conditions"] if c["type"] == "Running")
        assert (running["status"], running["reason"]) == ("False", "Error")
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        server.close()


def test_a_too_small_template_fails_with_cdis_size_message(cluster: FakeCluster, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "state"))
    server = DiskServer(_qcow2(tmp_path / "cloud.qcow2", "3G"), "127.0.0.1")
    p = _attach(cluster, server.url, "t1", size="1Gi")  # what every http image got before
    try:
        vm = p.create_vm(VMSpec(name="small", image="cloud"))
        with pytest.raises(PlatformError, match="DataVolume small-root import failed: DataVolume too small to "
                                                "contain image"):
            p.wait_running(vm, 120)
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        server.close()


def test_a_claim_cdi_cannot_render_is_a_failure_not_a_wait(cluster: FakeCluster, tmp_path: Path) -> None:
    p = open_platform(cluster, tmp_path / "state")
    try:
        source = DiskSource(http_url="http://127.0.0.1:9/d.img", size="1Gi")  # no access modes
        p.kube.create(DATAVOLUME, manifests.data_volume("bare", p.namespace, "t1", source), p.namespace)
        path = ("cdi.kubevirt.io/v1beta1/datavolumes", p.namespace, "bare")
        deadline = time.monotonic() + 10
        while not (cluster.store.get(*path).get("status") or {}).get("conditions") and time.monotonic() < deadline:
            time.sleep(0.05)
        status = cluster.store.get(*path)["status"]
        assert "phase" not in status
        assert failure_of(status) == "no accessMode specified in StorageProfile standard"
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
