"""Paper nodes on a real control plane: the same kubelet and virt-handler state machine without
guests, at a size a test can afford (20 nodes, 40 VMs); the 1,000-VMI run is the benchmark's.

Checked in what the real components write: every VMI Running with KubeVirt's timestamps, every
migration Succeeded, every pod gone after the VMs are deleted, and the agent's own cost (its
status file: CPU seconds, requests, never a per-object poll).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from virtproof.lab.controlplane.lab import SimKubeVirtLabHandle
from virtproof.lab.simnodes.kube import Kube, Obj, path_of
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario

from controlplane_support import control_plane, wait_until

pytestmark = [pytest.mark.slow]

NS = "paper"
NODES = 20
VMS = 40


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[tuple[SimKubeVirtLabHandle, Kube]]:
    control_plane()
    scenario = Scenario.model_validate({"name": "simnodes-paper", "suites": {"boot": {}},
                                        "lab": {"kind": "sim-kubevirt", "nodes": NODES, "paper": True}})
    handle = SimKubeVirtLabHandle(scenario, f"simpaper-{new_run_id()}")
    try:
        handle.up(lambda message: print(message, file=sys.stderr, flush=True)).close()
        admin = Kube.from_kubeconfig(handle.paths.kubeconfig("admin"))
        admin.create(path_of("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": NS}})
        yield handle, admin
        admin.close()
    finally:
        handle.down()


def _wait(what: str, check: Callable[[], Any], timeout: float = 600.0) -> Any:
    return wait_until(what, check, timeout, 1.0)


def _vm(i: int) -> Obj:
    labels = {"kubevirt.io/vm": f"p{i}"}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": f"p{i}", "namespace": NS},
            "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": labels}, "spec": {
                "domain": {"memory": {"guest": "64Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                       "interfaces": [{"name": "default", "masquerade": {}}]}},
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "root", "containerDisk": {"image": "registry.invalid/virtproof/micro:latest"}}]}}}}


def _status_after(handle: SimKubeVirtLabHandle, moment: float) -> dict[str, Any]:
    """The agent's status file as it writes it next after ``moment`` (every 10 s, atomically)."""
    path = handle.paths.root / "agent" / "status.json"

    def fresh() -> dict[str, Any] | None:
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data if data.get("written", 0) >= moment else None

    found: dict[str, Any] = _wait("the agent's status written after the moves", fresh)
    return found


def test_paper_vms_run_migrate_and_go(lab: tuple[SimKubeVirtLabHandle, Kube]) -> None:
    handle, admin = lab
    vmis = path_of("kubevirt.io", "v1", "virtualmachineinstances", NS)
    for i in range(VMS):
        admin.create(path_of("kubevirt.io", "v1", "virtualmachines", NS), _vm(i))
    items = _wait("all VMIs Running", lambda: (v := admin.get(vmis)["items"]) and len(v) == VMS and all(
        (x.get("status") or {}).get("phase") == "Running" for x in v) and v)
    nodes = {v["status"]["nodeName"] for v in items}
    assert len(nodes) > 1 and all(n.startswith("node") for n in nodes)
    for vmi in items:
        stamps = [s["phaseTransitionTimestamp"] for s in vmi["status"]["phaseTransitionTimestamps"]]
        assert all(s.endswith("Z") and "." not in s for s in stamps)
        assert vmi["status"]["interfaces"][0]["ipAddress"]
    migs = path_of("kubevirt.io", "v1", "virtualmachineinstancemigrations", NS)
    moved = {v["metadata"]["name"]: v["status"]["nodeName"] for v in items[:10]}
    for name in moved:
        admin.create(migs, {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                            "metadata": {"generateName": f"{name}-", "namespace": NS}, "spec": {"vmiName": name}})
    done = _wait("10 migrations final", lambda: (m := admin.get(migs)["items"]) and all(
        (x.get("status") or {}).get("phase") in ("Succeeded", "Failed") for x in m) and m)
    assert [m["status"]["phase"] for m in done] == ["Succeeded"] * 10
    for name, source in moved.items():
        vmi = admin.get(f"{vmis}/{name}")
        assert vmi["status"]["nodeName"] != source and vmi["status"]["migrationState"]["completed"]
    status = _status_after(handle, time.time())
    assert status["paper"] and status["guests_running"] == VMS
    assert status["requests"].get("GET", 0) < 3 * NODES + 50  # informers, not polls: reads stay flat
    for vm in admin.get(path_of("kubevirt.io", "v1", "virtualmachines", NS))["items"]:
        admin.delete(path_of("kubevirt.io", "v1", "virtualmachines", NS, vm["metadata"]["name"]))
    _wait("VMIs and pods gone", lambda: not admin.get(vmis)["items"] and not admin.get(
        path_of("", "v1", "pods", NS))["items"])
    print(f"agent after {VMS} paper VMIs: {status['cpu_user_s'] + status['cpu_system_s']:.1f} s CPU, "
          f"requests {status['requests']}", file=sys.stderr)
