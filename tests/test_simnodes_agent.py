"""The node agent against a real control plane: the sim-kubevirt lab (real etcd, kube-apiserver,
controller-manager, scheduler, KubeVirt v1.9.0's virt-api and virt-controller) with two qemu
lab nodes, and the agent the lab starts as their kubelet and virt-handler.

Everything is driven the way a user drives KubeVirt (VirtualMachines, migrations, evictions,
Services through the admin identity) and checked in what the real components then write.
One lab for the module; the last test stops the agent with SIGTERM and checks it left nothing.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from virtproof.core.processes import pid_alive
from virtproof.lab.controlplane.agent_contract import PID_FILE
from virtproof.lab.controlplane.lab import SimKubeVirtLabHandle
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.platform import Endpoint, GuestAccess
from virtproof.lab.qemu import l2
from virtproof.lab.qemu.process import find_processes
from virtproof.lab.qemu.state import LabState
from virtproof.lab.simnodes.kube import MERGE_PATCH, ApiError, Kube, Obj, path_of
from virtproof.lab.simnodes.times import parse_time
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario

from controlplane_support import control_plane

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.qemu]

NS = "simnodes"
VMI_PATH = ("kubevirt.io", "v1", "virtualmachineinstances")
MIG_PATH = ("kubevirt.io", "v1", "virtualmachineinstancemigrations")


@dataclass
class Lab:
    handle: SimKubeVirtLabHandle
    admin: Kube
    access: GuestAccess
    state: LabState

    def get(self, *path: str, name: str | None = None, namespace: str | None = NS) -> Obj:
        return self.admin.get(path_of(*path, namespace, name))

    def vmi(self, name: str) -> Obj:
        return self.get(*VMI_PATH, name=name)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 240.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
            except ApiError as exc:
                if exc.status != 404:
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s; agent log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        try:
            return "\n".join((self.handle.paths.root / "agent.log").read_text().splitlines()[-30:])
        except OSError:
            return "(no agent log)"

    def ssh(self, ip: str, command: str, port: int = 22) -> str:
        endpoint = Endpoint(ip, port)
        wait_for_banner(endpoint, 180)
        with GuestSession(endpoint, self.access) as session:
            return str(session.run(command, check=True).stdout).strip()


def _scenario() -> Scenario:
    return Scenario.model_validate({"name": "simnodes-test", "lab": {"kind": "sim-kubevirt", "nodes": 2},
                                    "suites": {"boot": {}}})


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[Lab]:
    control_plane()
    handle = SimKubeVirtLabHandle(_scenario(), f"simnodes-{new_run_id()}")
    try:
        handle.up(lambda message: print(message, file=sys.stderr, flush=True)).close()
        admin = Kube.from_kubeconfig(handle.paths.kubeconfig("admin"))
        state = LabState.load(handle.lab_id)
        access = handle._images(state)[handle.scenario.guest.image]
        key, host_key, user = access.private_key, access.host_key, access.user
        assert key and host_key and user
        admin.create(path_of("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": NS}})
        yield Lab(handle, admin, GuestAccess(user, Path(key), host_key), state)
        admin.close()
    finally:
        handle.down()


def _vm(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": NS},
        "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": {"kubevirt.io/vm": name}}, "spec": {
            "evictionStrategy": "LiveMigrate",
            "domain": {"cpu": {"cores": 1}, "memory": {"guest": "256Mi"},
                       "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                   "interfaces": [{"name": "default", "masquerade": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "registry.invalid/virtproof/micro:latest"}}],
            **spec}}},
    }


def _running(lab: Lab, name: str) -> Obj:
    vmi = lab.wait(f"VMI {name} Running", lambda: (v := lab.vmi(name)).get("status", {}).get("phase") == "Running"
                   and v["status"].get("interfaces") and v)
    assert isinstance(vmi, dict)
    return vmi


def _migrate(lab: Lab, name: str) -> tuple[Obj, float]:
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": f"{name}-", "namespace": NS}, "spec": {"vmiName": name}}
    started = time.monotonic()
    mig = lab.admin.create(path_of(*MIG_PATH, NS), body)
    def final() -> Obj | None:
        m = lab.get(*MIG_PATH, name=mig["metadata"]["name"])
        status = m.get("status") or {}
        # virt-controller copies the VMI's finalized migrationState onto the object in a sync after
        # the one that set the final phase (KubeVirt v1.9.0 pkg/virt-controller/watch/migration/
        # migration.go, "Store the finalized migration state"): wait for it too.
        copied = (status.get("migrationState") or {}).get("endTimestamp")
        return m if status.get("phase") == "Failed" or (status.get("phase") == "Succeeded" and copied) else None

    done: Obj = lab.wait("VMIM final, its migrationState stored", final)
    return done, time.monotonic() - started


def _netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_nodes_are_kept_ready_by_their_kubelet_and_virt_handler(lab: Lab) -> None:
    lease_path = ("coordination.k8s.io", "v1", "leases")
    first = lab.get(*lease_path, name="node0", namespace="kube-node-lease")
    assert first["spec"]["holderIdentity"] == "node0" and first["spec"]["leaseDurationSeconds"] == 40
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
    renewed = lab.wait("lease renewed", lambda: (lease := lab.get(*lease_path, name="node0",
                                                                      namespace="kube-node-lease"))
                       ["spec"]["renewTime"] != first["spec"]["renewTime"] and lease, timeout=30)
    gap = (parse_time(renewed["spec"]["renewTime"]) or 0) - (parse_time(first["spec"]["renewTime"]) or 0)
    assert 5 < gap < 16, gap  # every 10 s (+4 % jitter), from whenever the first read happened
    node = lab.get("", "v1", "nodes", name="node0", namespace=None)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert node["metadata"]["labels"]["kubevirt.io/schedulable"] == "true"
    assert parse_time(node["metadata"]["annotations"]["kubevirt.io/heartbeat"])
    managers = {(f.get("manager"), f.get("subresource")) for f in node["metadata"]["managedFields"]}
    assert ("kubelet", "status") in managers and ("virt-handler", None) in managers  # the writers' own identities


def test_a_vm_runs_a_real_guest_reachable_over_ssh(lab: Lab) -> None:
    lab.admin.create(path_of("kubevirt.io", "v1", "virtualmachines", NS), _vm("vm0"))
    vmi = _running(lab, "vm0")
    status = vmi["status"]
    ip = status["interfaces"][0]["ipAddress"]
    segment = l2.segment_of(lab.state)  # the guest sits on the lab's L2 segment, not on a node's subnet
    assert segment is not None and ipaddress.ip_address(ip) in segment.network
    stamps = {s["phase"]: s["phaseTransitionTimestamp"] for s in status["phaseTransitionTimestamps"]}
    assert stamps["Running"].endswith("Z") and "." not in stamps["Running"]  # metav1.Time: whole seconds
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["LiveMigratable"]["status"] == "True"
    # Ready is virt-controller's copy of the launcher pod's Ready (KubeVirt v1.9.0
    # pkg/virt-controller/watch/vmi/lifecycle.go syncReadyConditionFromPod), a sync that can come
    # after the one that saw Running
    lab.wait("VMI vm0 Ready", lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in lab.vmi("vm0")["status"]["conditions"]), timeout=60)
    assert status["machine"]["type"].startswith("pc-q35")
    assert lab.ssh(ip, "cat /proc/sys/kernel/random/boot_id")
    pod = next(p for p in lab.get("", "v1", "pods")["items"] if p["metadata"]["labels"].get("kubevirt.io/vm") == "vm0")
    compute = pod["status"]["containerStatuses"][0]
    assert "@sha256:" in compute["imageID"] and compute["ready"] and pod["status"]["podIP"] == ip
    assert {m.get("manager") for m in pod["metadata"]["managedFields"] if m.get("subresource") == "status"} >= {
        "kubelet"}


def test_a_migration_moves_the_same_guest_with_real_qemu(lab: Lab) -> None:
    vmi = _running(lab, "vm0")
    ip, source = vmi["status"]["interfaces"][0]["ipAddress"], vmi["status"]["nodeName"]
    boot = lab.ssh(ip, "echo kept > /root/marker; cat /proc/sys/kernel/random/boot_id")
    before = {pid: _netns_of(pid) for pid in find_processes(f"guest=vp-{lab.handle.lab_id}-")}
    mig, took = _migrate(lab, "vm0")
    assert mig["status"]["phase"] == "Succeeded", (mig["status"], lab.log_tail())
    after = lab.vmi("vm0")
    state = after["status"]["migrationState"]
    assert after["status"]["nodeName"] == state["targetNode"] != source
    assert after["metadata"]["labels"]["kubevirt.io/nodeName"] == state["targetNode"]
    assert state["completed"] and state["mode"] == "PreCopy" and state["targetNodeAddress"]
    assert (parse_time(state["startTimestamp"]) or 0) <= (parse_time(state["endTimestamp"]) or 0)
    assert lab.ssh(ip, "cat /root/marker; cat /proc/sys/kernel/random/boot_id").split() == ["kept", boot]
    now = {pid: _netns_of(pid) for pid in find_processes(f"guest=vp-{lab.handle.lab_id}-")}
    assert set(now).isdisjoint(before) and len(now) == 1  # a new qemu, the old one gone
    target_ns = next(n.netns for n in lab.state.nodes if n.name == state["targetNode"])
    assert next(iter(now.values())) == os.stat(f"/run/netns/{target_ns}").st_ino
    source_pod = lab.get("", "v1", "pods", name=state["sourcePod"])
    assert source_pod["status"]["phase"] == "Succeeded"  # the source launcher exited
    print(f"VMIM create -> Succeeded: {took:.2f} s", file=sys.stderr)


def _policy(lab: Lab, name: str, vm: str, **spec: Any) -> None:
    path = path_of("migrations.kubevirt.io", "v1alpha1", "migrationpolicies")
    try:
        lab.admin.delete(f"{path}/{name}")
    except ApiError:
        pass
    lab.admin.create(path, {"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
                            "metadata": {"name": name},
                            "spec": {"selectors": {"virtualMachineInstanceSelector": {"kubevirt.io/vm": vm}}, **spec}})


def test_post_copy_only_after_completion_timeout_per_gib(lab: Lab) -> None:
    vmi = _running(lab, "vm0")
    ip = vmi["status"]["interfaces"][0]["ipAddress"]
    boot = lab.ssh(ip, "cat /proc/sys/kernel/random/boot_id")
    _policy(lab, "slow-postcopy", "vm0", allowPostCopy=True, completionTimeoutPerGiB=2, bandwidthPerMigration="2Mi")
    try:
        mig, _ = _migrate(lab, "vm0")
        assert mig["status"]["phase"] == "Succeeded", mig["status"]
        assert mig["status"]["migrationState"]["mode"] == "PostCopy"
        assert lab.vmi("vm0")["status"]["migrationState"]["mode"] == "PostCopy"
        _policy(lab, "slow-postcopy", "vm0", allowPostCopy=True)  # 150 s/GiB: an idle guest is done long before
        mig, _ = _migrate(lab, "vm0")
        assert mig["status"]["phase"] == "Succeeded", mig["status"]
        assert mig["status"]["migrationState"].get("mode") == "PreCopy", (mig["status"], lab.vmi("vm0")["status"])
    finally:
        lab.admin.delete(path_of("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", name="slow-postcopy"))
    assert lab.ssh(ip, "cat /proc/sys/kernel/random/boot_id") == boot


def test_deleting_a_running_migration_cancels_the_qemu_migration(lab: Lab) -> None:
    vmi = _running(lab, "vm0")
    node, ip = vmi["status"]["nodeName"], vmi["status"]["interfaces"][0]["ipAddress"]
    _policy(lab, "slow", "vm0", bandwidthPerMigration="1Mi")
    try:
        body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": "cancelled", "namespace": NS}, "spec": {"vmiName": "vm0"}}
        lab.admin.create(path_of(*MIG_PATH, NS), body)
        lab.wait("Running", lambda: lab.get(*MIG_PATH, name="cancelled").get("status", {}).get("phase") == "Running")
        lab.admin.delete(path_of(*MIG_PATH, NS, "cancelled"))
        state = lab.wait("migration failed on the VMI",
                         lambda: (s := lab.vmi("vm0")["status"].get("migrationState") or {}).get("failed") and s)
    finally:
        lab.admin.delete(path_of("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", name="slow"))
    assert (state["failureReason"], state["abortStatus"]) == ("Live migration has been aborted", "Succeeded")
    assert lab.vmi("vm0")["status"]["nodeName"] == node
    assert lab.ssh(ip, "echo alive") == "alive"


def test_a_killed_destination_fails_the_migration_and_the_guest_stays(lab: Lab) -> None:
    vmi = _running(lab, "vm0")
    node, ip = vmi["status"]["nodeName"], vmi["status"]["interfaces"][0]["ipAddress"]
    boot = lab.ssh(ip, "cat /proc/sys/kernel/random/boot_id")
    source_pids = set(find_processes(f"guest=vp-{lab.handle.lab_id}-"))
    _policy(lab, "slow", "vm0", bandwidthPerMigration="1Mi")
    try:
        body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": "killed", "namespace": NS}, "spec": {"vmiName": "vm0"}}
        lab.admin.create(path_of(*MIG_PATH, NS), body)
        new = lab.wait("destination qemu", lambda: set(find_processes(f"guest=vp-{lab.handle.lab_id}-")) - source_pids)
        os.kill(max(new), signal.SIGKILL)
        mig = lab.wait("VMIM Failed", lambda: (m := lab.get(*MIG_PATH, name="killed")).get("status", {}).get(
            "phase") in ("Failed", "Succeeded") and m)
    finally:
        lab.admin.delete(path_of("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", name="slow"))
    assert mig["status"]["phase"] == "Failed"
    state = lab.vmi("vm0")["status"]["migrationState"]
    assert state["failed"] and state["failureReason"], state
    assert lab.vmi("vm0")["status"]["nodeName"] == node
    assert lab.ssh(ip, "cat /proc/sys/kernel/random/boot_id") == boot


def test_a_nodeport_service_reaches_the_guest_on_every_node(lab: Lab) -> None:
    lab.admin.create(path_of("", "v1", "services", NS), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "vm0-ssh", "namespace": NS},
        "spec": {"type": "NodePort", "selector": {"kubevirt.io/vm": "vm0"},
                 "ports": [{"name": "ssh", "port": 22, "targetPort": 22, "nodePort": 30222}]}})
    vmi = _running(lab, "vm0")
    boot = lab.ssh(vmi["status"]["interfaces"][0]["ipAddress"], "cat /proc/sys/kernel/random/boot_id")
    for node in lab.state.nodes:
        assert lab.ssh(node.address, "cat /proc/sys/kernel/random/boot_id", port=30222) == boot


def test_eviction_evacuates_the_vmi_through_a_migration(lab: Lab) -> None:
    vmi = _running(lab, "vm0")
    node = vmi["status"]["nodeName"]
    pod = next(p for p in lab.get("", "v1", "pods")["items"]
               if p["spec"]["nodeName"] == node and p["status"]["phase"] == "Running"
               and p["metadata"]["labels"].get("kubevirt.io/vm") == "vm0")
    name = pod["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": NS}}
    lab.admin.patch(path_of("", "v1", "nodes", name=node), {"spec": {"unschedulable": True}}, MERGE_PATCH)
    try:
        with pytest.raises(ApiError) as refused:
            lab.admin.create(path_of("", "v1", "pods", NS, name, "eviction"), eviction)
        assert refused.value.status == 429 and "triggered evacuation" in refused.value.message
        lab.wait("VMI moved off the drained node", lambda: lab.vmi("vm0")["status"]["nodeName"] != node)
        lab.wait("source pod Succeeded", lambda: lab.get("", "v1", "pods", name=name)["status"]["phase"] == "Succeeded")
        lab.admin.create(path_of("", "v1", "pods", NS, name, "eviction"), eviction)  # now it may go
    finally:
        lab.admin.patch(path_of("", "v1", "nodes", name=node), {"spec": {"unschedulable": False}}, MERGE_PATCH)


def test_stopping_the_vm_stops_the_guest_and_removes_its_pods(lab: Lab) -> None:
    ip = _running(lab, "vm0")["status"]["interfaces"][0]["ipAddress"]
    lab.admin.patch(path_of("kubevirt.io", "v1", "virtualmachines", NS, "vm0"), {"spec": {"runStrategy": "Halted"}},
                    MERGE_PATCH)
    lab.wait("VMI gone", lambda: not lab.get(*VMI_PATH)["items"])
    lab.wait("launcher pods gone", lambda: not [p for p in lab.get("", "v1", "pods")["items"]
                                                if p["metadata"]["labels"].get("kubevirt.io/vm") == "vm0"])
    assert not find_processes(f"guest=vp-{lab.handle.lab_id}-")
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((ip, 22)) != 0


def test_sigterm_stops_every_guest_and_exits_0(lab: Lab) -> None:
    lab.admin.patch(path_of("kubevirt.io", "v1", "virtualmachines", NS, "vm0"), {"spec": {"runStrategy": "Always"}},
                    MERGE_PATCH)
    _running(lab, "vm0")
    assert find_processes(f"guest=vp-{lab.handle.lab_id}-")
    pid = int((lab.handle.paths.root / PID_FILE).read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the agent did not exit within 60 s of SIGTERM"
    assert not find_processes(f"guest=vp-{lab.handle.lab_id}-")
    taps = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    for node in lab.state.nodes:
        assert "vpt" not in subprocess.run(["ip", "-n", node.netns or "", "-o", "link"], capture_output=True,
                                           text=True, check=False).stdout, taps
    nodes = lab.get("", "v1", "nodes", namespace=None)["items"]
    assert {n["metadata"]["labels"]["kubevirt.io/schedulable"] for n in nodes} == {"false"}  # labelNodeUnschedulable
    log = (lab.handle.paths.root / "agent.log").read_text()
    assert "all guests stopped" in log and log.rstrip().endswith("stopped")
    # the exit code, from an agent this test starts itself on the same lab
    agent = subprocess.Popen([sys.executable, "-m", "virtproof.lab.simnodes", "--lab-dir", str(lab.handle.paths.root)])
    try:
        _running(lab, "vm0")  # the VMI whose domain went with the old agent is Failed, then restarted
        lab.wait("guest qemu", lambda: find_processes(f"guest=vp-{lab.handle.lab_id}-"))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    assert not find_processes(f"guest=vp-{lab.handle.lab_id}-")
