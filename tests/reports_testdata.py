"""Generated runs for the reports tests (imported by tests/test_reports_*.py; not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from virtproof.reports.results import RunDirectory, SampleSink

XSS = "<script>alert(1)</script>"


def make_run(
    root: Path,
    run_id: str,
    *,
    seed: int = 0,
    scale: float = 1.0,
    scenario: str = "quickstart",
    platform: str = "qemu",
    capabilities: tuple[str, ...] = ("boot", "live_migration", "post_copy"),
    vm_name: str = "vm",
    extra_metrics: bool = True,
    outcomes: bool = True,
    n_boot: int = 30,
    convergence: bool = False,
) -> RunDirectory:
    """A run directory with samples of every chart's metrics, written through SampleSink."""
    run = RunDirectory.create(root, run_id, {
        "scenario": {"name": scenario, "sha256": "0" * 64},
        "platform": {"name": platform, "capabilities": list(capabilities)},
        "lab": {"kind": "qemu", "nodes": 2},
        "host": {"hostname": "bench-1", "cpus": 2, "kernel": "6.1.0"},
        "versions": {"qemu": "7.2.0", "virtproof": "0.1.0"},
    })
    sink = SampleSink(run.path)
    rng = np.random.default_rng(seed)
    for i in range(n_boot):
        running = float(rng.uniform(0.2, 0.5)) * scale
        ssh = running + float(rng.gamma(4.0, 0.5)) * scale
        name = f"{vm_name}-{i}"
        sink.record("boot.time_to_running_s", running, "s", vm=name, node=f"node-{i % 2}")
        sink.record("boot.time_to_ssh_s", ssh, "s", vm=name, node=f"node-{i % 2}")
        sink.record("boot.time_to_command_s", ssh + 0.2, "s", vm=name, node=f"node-{i % 2}")
    if extra_metrics:
        for policy in ("precopy", "postcopy"):
            for _ in range(5):
                sink.record("migration.total_s", float(rng.uniform(0.7, 2.3)), "s", policy=policy)
                sink.record("migration.downtime_ms", float(rng.uniform(5, 25)), "ms", policy=policy)
                sink.record("migration.guest_downtime_ms", float(rng.uniform(8, 40)), "ms", policy=policy)
        for step in (1, 2, 4, 8):
            for v in range(step):
                sink.record("density.time_to_ssh_s", 2.0 + step * 0.3 + float(rng.uniform(0, 0.5)), "s",
                            vms_running=str(step), vm=f"d-{step}-{v}")
            sink.record("density.vm_overhead_mib", 30.0 + step, "MiB", vms_running=str(step))
        sink.record("density.capacity_vms", 8, "vms")
        sink.record("v2v.convert_throughput_mibps", 80.0, "MiB/s", disk="win-vmdk", verdict="ready")
        sink.record("v2v.convert_throughput_mibps", 40.0, "MiB/s", disk="linux-vhdx", verdict="blocked")
    if convergence:
        add_convergence(sink, vm_name)
    if outcomes:
        lines = [
            {"nodeid": "suites/boot/test_boot.py::test_boot", "suite": "boot", "outcome": "passed",
             "duration_s": 3.1, "reason": None, "capabilities": ["boot"]},
            {"nodeid": "suites/migration/test_mig.py::test_postcopy", "suite": "migration",
             "outcome": "skipped" if "post_copy" not in capabilities else "passed", "duration_s": 0.0,
             "reason": "platform lacks post_copy" if "post_copy" not in capabilities else None,
             "capabilities": ["live_migration", "post_copy"]},
            {"nodeid": "suites/features/test_drain.py::test_drain", "suite": "features", "outcome": "skipped",
             "duration_s": 0.0, "reason": f"node_drain not offered {XSS}", "capabilities": ["node_drain"]},
        ]
        (run.path / "outcomes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def finished(run: RunDirectory, status: str = "passed") -> RunDirectory:
    run.finish(status)  # type: ignore[arg-type]
    return run


def add_convergence(sink: SampleSink, vm_name: str = "vm") -> None:
    """A convergence sweep's samples (32 MiB/s cap, pre-copy stops converging past 27 MiB/s) and a
    move whose integrity check found corrupted pages."""
    base = {"vm": f"{vm_name}-sweep", "bandwidth_mibps": "32", "downtime_limit_ms": "300"}
    for mode in ("precopy", "auto_converge", "postcopy"):
        for rate in (0.0, 9.14, 18.29, 27.43, 36.57, 45.71, 54.86, 64.0):
            labels = {**base, "mode": mode, "dirty_mibps": f"{rate:g}"}
            ok = mode != "precopy" or rate < 30
            sink.record("convergence.converged", 1.0 if ok else 0.0, "bool", **labels)
            sink.record("convergence.total_s", (4 + rate / 8) if ok else 60.0, "s", **labels)
            sink.record("convergence.transferred_mib", 120 + rate * (3 if ok else 20), "MiB", **labels)
            if ok:
                sink.record("convergence.downtime_ms", 20 + rate, "ms", **labels)
                sink.record("convergence.guest_downtime_ms", 200 + rate * 5, "ms", path="direct", **labels)
            if mode == "precopy":
                sink.record("convergence.predicted_total_s", 3.75 / max(1 - rate / 31, 0.06), "s", **labels)
    common = {"bandwidth_mibps": "32", "available_mibps": "31.0", "downtime_limit_ms": "300"}
    sink.record("convergence.predicted_boundary_mibps", 29.6, "MiB/s", **common)
    sink.record("convergence.available_bandwidth_mibps", 31.0, "MiB/s", **common)
    sink.record("convergence.measured_boundary_mibps", 36.57, "MiB/s", mode="precopy", bound="at_or_below",
                last_converged="27.43", **common)  # fmt: skip
    move = {"vm": vm_name, "source": "node0", "target": "node1", "leg": "1", "mode": "precopy"}
    sink.record("migration.corrupted_pages", 0, "pages", cause="none", **{**move, "leg": "0"})
    sink.record("migration.corrupted_pages", 3, "pages", cause="qemu-tcg-dirty-bitmap",
                first_bad=f"page 7 at region offset 0x7008 (guest-physical 0x1f3a7008): holds generation 4, "
                          f"expected 5 (a stale copy: a lost write) {XSS}", **move)  # fmt: skip
    sink.record("migration.verify_s_per_gib", 0.8, "s/GiB", mib="64", **move)
