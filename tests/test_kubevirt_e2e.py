"""A real live migration through the KubeVirt backend on the sim-kubevirt lab.

What is real: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KubeVirt v1.9.0's
virt-api and virt-controller (the VirtualMachineInstanceMigration's phases are virt-controller's);
the kubernetes client, watches and admission; the guest is the micro guest under qemu on a
network-namespace node, readiness is its own SSH banner and a command over SSH through the VM's
NodePort Service; the move is a qemu live migration between the nodes. What is simulated: the
kubelet and virt-handler (virtproof's node agent, which also forwards NodePorts as kube-proxy).

The boot and migration suites run unchanged on this lab through ``virtproof run`` in
``tests/test_sim_kubevirt_run.py`` (these tests once ran them through a fake API server).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from virtproof.lab.controlplane.components import LabPaths, lab_processes
from virtproof.lab.controlplane.lab import SimKubeVirtLabHandle
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.platform import Endpoint, MigrationPolicy, VMSpec
from virtproof.lab.simnodes.kube import Kube, path_of
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario

from controlplane_support import control_plane

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.qemu]


@pytest.fixture(scope="module")
def lab(module_root: None, leftovers: Callable[[str], list[str]]) -> Iterator[tuple[SimKubeVirtLabHandle,
                                                                                  KubeVirtPlatform]]:
    control_plane()
    lab_id = f"kve2e-{new_run_id()}"
    scenario = Scenario.model_validate({"name": "kv-e2e", "lab": {"kind": "sim-kubevirt", "nodes": 2},
                                        "guest": {"image": "micro", "memory": "160Mi"}, "suites": {"boot": {}}})
    handle = SimKubeVirtLabHandle(scenario, lab_id)
    try:
        platform = handle.up(lambda message: print(message, file=sys.stderr, flush=True))
        try:
            yield handle, platform
        finally:
            platform.close()
    finally:
        handle.down()
    assert leftovers(lab_id) == []
    assert lab_processes(LabPaths.for_lab(lab_id).marker) == []


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


def test_real_live_migration_keeps_the_guest_reachable_through_its_service(
        lab: tuple[SimKubeVirtLabHandle, KubeVirtPlatform]) -> None:
    handle, p = lab
    access = p.guest_access("micro")
    vm = p.create_vm(VMSpec(name="mover", memory_mib=160, scratch_disk_mib=0))
    p.wait_running(vm, 180)
    endpoint = vm.ssh_endpoint()
    wait_for_banner(endpoint, 180)
    with GuestSession(endpoint, access, timeout=60) as session:
        session.run("echo before > /tmp/marker", check=True)
        boot_id = session.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
    assert _http_get(vm.http_endpoint()).startswith(b"HTTP/1")
    source = vm.node
    target = next(n for n in p.nodes() if n != source)
    result = p.migrate(vm, target, MigrationPolicy(timeout_s=150))
    assert result.ok and result.source == source and result.target == target, result
    # startTimestamp/endTimestamp are metav1.Time (whole seconds): a sub-second move reads 0 s
    # there, so its length is judged on the harness's own clock, and the API's within a second
    assert result.resolution_s == 1.0 and vm.node == target
    assert result.observed_started is not None and result.observed_finished is not None
    assert result.observed_finished > result.observed_started
    assert 0 <= result.total_s <= result.observed_finished - result.observed_started + 1.0
    assert vm.ssh_endpoint() == endpoint  # the Service's NodePort stays; kube-proxy follows the VMI
    wait_for_banner(endpoint, 60)
    assert _http_get(vm.http_endpoint()).startswith(b"HTTP/1")
    with GuestSession(endpoint, access, timeout=60) as session:
        # the same guest, moved: the file written before the migration is still there
        assert session.run("cat /tmp/marker", check=True).stdout.strip() == "before"
        assert session.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip() == boot_id
    # what the real API server holds: the VMI on the target, the VMIM Succeeded (virt-controller's word)
    admin = Kube.from_kubeconfig(handle.paths.kubeconfig("admin"))
    try:
        ns = f"virtproof-{handle.lab_id}"
        vmi = admin.get(path_of("kubevirt.io", "v1", "virtualmachineinstances", ns, "mover"))
        assert vmi["status"]["nodeName"] == target
        state = vmi["status"]["migrationState"]
        assert state["completed"] is True and not state.get("failed") and state["targetNode"] == target
        migrations = admin.get(path_of("kubevirt.io", "v1", "virtualmachineinstancemigrations", ns, None))["items"]
        assert [m["status"]["phase"] for m in migrations if m["spec"]["vmiName"] == "mover"] == ["Succeeded"]
    finally:
        admin.close()
    p.delete_vm(vm)
