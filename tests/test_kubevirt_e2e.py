"""The real boot suite and real migrations through the fake KubeVirt API server.

What is real: the kubernetes client, HTTP, watch streams and schema validation; the guests are
the micro guest under qemu (one qemu process per VMI, started by the fake's virt-handler on the
qemu lab node of the same name); readiness is the guest's own SSH banner and a command over SSH
through the VM's NodePort Service; migrations are qemu live migrations between the lab's nodes.
What is simulated: KubeVirt's controllers (phase transitions) and kube-proxy (a TCP forwarder).
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtproof.lab.factory import open_lab
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.kubevirt import cleanup
from virtproof.lab.kubevirt.config import ImageConfig
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.platform import Endpoint, MigrationPolicy, VMSpec
from virtproof.lab.qemu.platform import QemuPlatform
from virtproof.reports.results import load_runs, read_manifest
from virtproof.scenarios.model import parse_scenario

from fakekube import FakeCluster
from fakekube.fixtures import open_platform
from fakekube.qemu_guests import QemuGuests

pytestmark = pytest.mark.qemu
MICRO_DISK = "registry.example/virtproof/micro:latest"


@pytest.fixture(scope="module")
def qemu_lab(micro_image: GuestImage, leftovers: Callable[[str], list[str]]) -> Iterator[QemuPlatform]:
    lab_id = f"kvfake-{secrets.token_hex(3)}"
    scenario = parse_scenario("name: kvfake\nlab: {kind: qemu, nodes: 2, network: loopback}\n"
                              "guest: {image: micro, memory: 160Mi}\nsuites: {boot: {}}\n")
    handle = open_lab(scenario, lab_id)
    platform = handle.up()
    assert isinstance(platform, QemuPlatform)
    try:
        yield platform
    finally:
        platform.close()
        handle.down()
    assert leftovers(lab_id) == []


@pytest.fixture
def cluster(qemu_lab: QemuPlatform) -> Iterator[FakeCluster]:
    runner = QemuGuests(qemu_lab)
    with FakeCluster(runner=runner, node_names=list(qemu_lab.nodes())) as c:
        yield c
    assert runner.vms == {}


def _http_get(ep: Endpoint) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((ep.host, ep.port), timeout=3) as sock:
                sock.settimeout(3)
                sock.sendall(b"GET /name HTTP/1.0\r\n\r\n")
                data = sock.recv(64)
                if data or time.monotonic() > deadline:
                    return data
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _micro_image(qemu_lab: QemuPlatform) -> dict[str, str]:
    access = qemu_lab.guest_access("micro")
    return {"container_disk": MICRO_DISK, "cloud_init": "false", "user": access.user,
            "private_key": str(access.private_key), "host_key": access.host_key}


def _scenario_file(tmp_path: Path, cluster: FakeCluster, qemu_lab: QemuPlatform, suites: str) -> Path:
    image = _micro_image(qemu_lab)
    scenario = tmp_path / "kv-fake.yaml"
    scenario.write_text(
        "name: kv-fake\nlab:\n  kind: existing\n"
        f"  kubeconfig: {cluster.kubeconfig}\n  images:\n    micro:\n"
        + "".join(f"      {k}: {v!r}\n" if k != "cloud_init" else f"      {k}: {v}\n" for k, v in image.items())
        + "guest: {image: micro, cpus: 1, memory: 192Mi}\n" + suites)
    return scenario


def test_boot_suite_runs_unchanged_through_the_fake_cluster(
        cluster: FakeCluster, qemu_lab: QemuPlatform, tmp_path: Path, virtproof_cmd: list[str],
        project_root: Path) -> None:
    scenario = _scenario_file(tmp_path, cluster, qemu_lab,
                              "suites:\n  boot: {count: 2, concurrency: 2, timeout_s: 150}\n")
    results = tmp_path / "results"
    proc = subprocess.run([*virtproof_cmd, "run", str(scenario), "--results", str(results)], cwd=project_root,
                          capture_output=True, text=True, timeout=500, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    run_dir = next(p for p in results.iterdir() if p.is_dir())
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "passed" and manifest["platform"]["name"] == "kubevirt"
    df = load_runs([run_dir])
    for metric in ("boot.time_to_running_s", "boot.time_to_ssh_s", "boot.time_to_command_s"):
        assert (df["metric"] == metric).sum() == 2, metric
    running = df[df["metric"] == "boot.time_to_running_s"]
    assert set(running["label.time_source"]) == {"platform"} and set(running["label.platform"]) == {"kubevirt"}
    assert set(cluster.runner.images_seen) == {MICRO_DISK}  # type: ignore[attr-defined]
    # the run cleaned up after itself: nothing labelled is left in the cluster
    assert [k for (g, _, _) in cluster.store.objects for k in [g] if "virtualmachine" in g] == []
    assert not any(ns == f"virtproof-{manifest['run_id']}" for (_, _, ns) in cluster.store.objects)
    # the bearer token never reaches the run's outputs
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert cluster.token not in path.read_text(errors="replace"), path
    assert cluster.token not in output


def test_migration_suite_runs_unchanged_through_the_fake_cluster(
        cluster: FakeCluster, qemu_lab: QemuPlatform, tmp_path: Path, virtproof_cmd: list[str],
        project_root: Path) -> None:
    scenario = _scenario_file(tmp_path, cluster, qemu_lab, (
        "suites:\n  migration: {count: 1, round_trips: 1, pattern: sequential, timeout_s: 150,\n"
        "              workload: {kind: idle}, policy: {mode: precopy, timeout_s: 120}}\n"))
    results = tmp_path / "results"
    proc = subprocess.run([*virtproof_cmd, "run", str(scenario), "--results", str(results)], cwd=project_root,
                          capture_output=True, text=True, timeout=500, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    run_dir = next(p for p in results.iterdir() if p.is_dir())
    df = load_runs([run_dir])
    total = df[df["metric"] == "migration.total_s"]
    assert len(total) == 2, df["metric"].value_counts().to_dict()  # there and back
    assert set(total["label.platform"]) == {"kubevirt"}
    assert (df["metric"] == "migration.guest_downtime_ms").sum() == 2  # the prober saw the guest answer
    assert not (df["metric"] == "migration.downtime_ms").any()  # KubeVirt does not report downtime
    assert [k for (g, _, _) in cluster.store.objects for k in [g] if "virtualmachine" in g] == []


def test_real_live_migration_keeps_the_guest_reachable_through_its_service(
        cluster: FakeCluster, qemu_lab: QemuPlatform, tmp_path: Path) -> None:
    access = qemu_lab.guest_access("micro")
    image = ImageConfig(DiskSource(container_disk=MICRO_DISK), user=access.user, cloud_init=False, access=access)
    p = open_platform(cluster, tmp_path, run_id="kvmig", images={"micro": image})
    try:
        vm = p.create_vm(VMSpec(name="mover", memory_mib=160, scratch_disk_mib=0))
        p.wait_running(vm, 150)
        endpoint = vm.ssh_endpoint()
        wait_for_banner(endpoint, 150)
        with GuestSession(endpoint, access, timeout=60) as session:
            session.run("echo before > /tmp/marker", check=True)
        assert _http_get(vm.http_endpoint()).startswith(b"HTTP/1")
        source = vm.node
        target = next(n for n in p.nodes() if n != source)
        result = p.migrate(vm, target, MigrationPolicy(timeout_s=120))
        assert result.ok and result.source == source and result.target == target, result
        assert result.total_s > 0 and vm.node == target
        assert vm.ssh_endpoint() == endpoint  # the Service's NodePort stays; kube-proxy follows the VMI
        wait_for_banner(endpoint, 60)
        assert _http_get(vm.http_endpoint()).startswith(b"HTTP/1")
        with GuestSession(endpoint, access, timeout=60) as session:
            # the same guest, moved: the file written before the migration is still there
            assert session.run("cat /tmp/marker", check=True).stdout.strip() == "before"
        assert cluster.runner.vms["mover"].node == target  # type: ignore[attr-defined]
        p.delete_vm(vm)
    finally:
        cleanup.clean(p.kube, "kvmig")
        p.close()
