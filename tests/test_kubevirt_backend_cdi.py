"""The KubeVirt backend's disk import (CDI DataVolumes) against the fake API server.

CDI is not part of the sim-kubevirt lab: the control-plane build has no CDI components (the
operator, its controller and importer need a container runtime to run the importer pod), so
DataVolumes have nobody to fill them there. Everything else the backend does is tested on the
real control plane (``test_kubevirt_backend.py``); these two stay on ``tests/fakekube`` until
CDI runs in a lab.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.lab.kubevirt import cleanup
from virtproof.lab.kubevirt.config import ImageConfig
from virtproof.lab.kubevirt.importer import DiskServer, import_disk
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.platform import VMSpec

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
