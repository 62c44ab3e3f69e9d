"""``virtproof run scenarios/sim-kubevirt.yaml`` as CI runs it: the boot, migration (an
evacuation through the real eviction API, then back) and density suites on the sim-kubevirt lab
(real etcd, kube-apiserver, controller-manager, scheduler, KubeVirt v1.9.0's virt-api and
virt-controller; qemu guests behind the node agent).

The evidence that the migrations are KubeVirt's is the API server's own audit log
(``$VIRTPROOF_SIM_AUDIT_LOG``, policy in ``virtproof.lab.controlplane.components``): which
VirtualMachineInstanceMigrations the server stored, who made them and which reached Succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtproof.lab.controlplane.components import AUDIT_LOG_ENV, LabPaths, lab_processes
from virtproof.reports.results import load_runs, read_manifest

from cli_run import CliRun

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.qemu]

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "sim-kubevirt.yaml"
SUITE_USER = "system:serviceaccount:virtproof:virtproof"
CONTROLLER_USER = "system:serviceaccount:kubevirt:kubevirt-controller"


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _migration_phases(events: list[dict[str, Any]], namespace: str) -> dict[str, list[str]]:
    """Every phase the API server stored per VMIM of ``namespace``, in order (answers of 2xx)."""
    phases: dict[str, list[str]] = {}
    for e in events:
        ref, obj = e["objectRef"], e.get("responseObject") or {}
        if ref.get("resource") != "virtualmachineinstancemigrations" or ref.get("namespace") != namespace:
            continue
        if obj.get("kind") != "VirtualMachineInstanceMigration" or not 200 <= e["responseStatus"]["code"] < 300:
            continue
        phase = (obj.get("status") or {}).get("phase")
        phases.setdefault(obj["metadata"]["name"], [])
        if phase:
            phases[obj["metadata"]["name"]].append(phase)
    return phases


def test_sim_kubevirt_scenario_runs_the_suites_on_real_kubevirt(
        root: None, virtproof_run: Callable[..., CliRun], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        leftovers: Callable[[str], list[str]]) -> None:
    audit_log = tmp_path / "audit.log"
    monkeypatch.setenv(AUDIT_LOG_ENV, str(audit_log))
    run = virtproof_run(SCENARIO, timeout=900)
    assert run.code == 0, run.output()
    run_dir = run.run_dir()
    manifest = read_manifest(run_dir)
    run_id = str(manifest["run_id"])
    assert manifest["status"] == "passed" and manifest["platform"]["name"] == "kubevirt"
    assert manifest["lab"]["kind"] == "sim-kubevirt"
    assert manifest["lab"]["versions"] == {"kubernetes": "v1.34.4", "kubevirt": "v1.9.0"}

    df = load_runs([run_dir])
    for metric in ("boot.time_to_running_s", "boot.time_to_ssh_s", "boot.time_to_command_s"):
        assert (df["metric"] == metric).sum() == 2, metric
    # clocks (issue 12, item 5): the platform's span is the cluster's, at metav1.Time's whole
    # seconds; what the harness observed (watch events) is its own series on this host's clock
    running = df[df["metric"] == "boot.time_to_running_s"]
    assert set(running["label.time_source"]) == {"platform"} and set(running["label.clock"]) == {"cluster"}
    assert set(running["label.resolution_s"]) == {"1"}
    observed = df[df["metric"] == "boot.observed_time_to_running_s"]
    assert len(observed) == 2 and set(observed["label.time_source"]) == {"harness"}
    assert set(observed["label.clock"]) == {"local"}
    capacity = df[df["metric"] == "density.capacity_vms"]
    assert len(capacity) == 1 and capacity["value"].iloc[0] >= 2, capacity
    total = df[df["metric"] == "migration.total_s"]
    assert len(total) == 4, df["metric"].value_counts().to_dict()  # 2 guests, there and back
    assert set(total["label.platform"]) == {"kubevirt"} and set(total["label.pattern"]) == {"evacuate"}
    assert sorted(total["label.policy"]) == ["drain", "drain", "precopy", "precopy"]
    assert set(zip(total["label.source"], total["label.target"], strict=True)) == {("node0", "node1"),
                                                                                 ("node1", "node0")}
    pages = df[df["metric"] == "migration.corrupted_pages"]
    assert len(pages) == 4 and (pages["value"] == 0).all(), pages
    assert set(total["label.time_source"]) == {"platform"} and set(total["label.resolution_s"]) == {"1"}
    seen = df[df["metric"] == "migration.observed_total_s"]  # the harness's own window of each move
    assert len(seen) == 4 and set(seen["label.time_source"]) == {"harness"}
    # the guests sit on the lab's L2 segment, which this host reaches (lab/controlplane/lab.py
    # declares guest_network_reachable): every move is probed through the NodePort Service and on
    # the guest's own address, and the Service's lag behind the guest is recorded (issue 12, item 6)
    downtime = df[df["metric"] == "migration.guest_downtime_ms"]
    assert sorted(downtime["label.path"]) == ["direct"] * 4 + ["service"] * 4, downtime  # every guest answered
    lag = df[df["metric"] == "migration.endpoint_switch_lag_ms"]
    assert len(lag) == 4 and (lag["value"] >= 0).all(), lag

    # what the real API server stored
    events = _audit(audit_log)
    namespace = f"virtproof-{run_id}"
    evictions = [e for e in events if e["objectRef"].get("subresource") == "eviction"
                 and e["objectRef"].get("namespace") == namespace]
    # the drain went through the eviction API; virt-api's pod-eviction webhook answered 429 and
    # marked the VMI for evacuation (KubeVirt pkg/virt-api/webhooks/validating-webhook/admitters)
    assert len(evictions) == 2 and {e["user"]["username"] for e in evictions} == {SUITE_USER}
    assert {e["responseStatus"]["code"] for e in evictions} == {429}, evictions
    phases = _migration_phases(events, namespace)
    creators = {e["responseObject"]["metadata"]["name"]: e["user"]["username"] for e in events
                if e["verb"] == "create" and e["objectRef"].get("resource") == "virtualmachineinstancemigrations"
                and e["objectRef"].get("namespace") == namespace}
    assert len(phases) == 4 and set(creators) == set(phases), (phases, creators)
    evacuations = [n for n, who in creators.items() if who == CONTROLLER_USER]
    assert len(evacuations) == 2 and all(n.startswith("kubevirt-evacuation-") for n in evacuations), creators
    assert sorted(creators.values()).count(SUITE_USER) == 2  # the way back: the suite's own VMIMs
    for name, seen in phases.items():
        assert seen and seen[-1] == "Succeeded", (name, seen)
        assert "Running" in seen and "Failed" not in seen, (name, seen)

    # the suites' bearer token (a ServiceAccount JWT, "eyJ..." base64 of '{"alg"') never reaches the outputs
    for path in [*run_dir.rglob("*"), audit_log]:
        if path.is_file():
            assert "eyJhbGciOi" not in path.read_text(errors="replace"), path
    assert "eyJhbGciOi" not in run.proc.stdout + run.proc.stderr

    # nothing left: no qemu, netns or state dir, and no process of the control plane
    assert leftovers(run_id) == []
    assert lab_processes(LabPaths.for_lab(run_id).marker) == []
    assert not LabPaths.for_lab(run_id).root.exists()
