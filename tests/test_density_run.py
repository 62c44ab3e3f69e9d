"""`virtproof run` with a tiny density scenario, end to end: suite, samples, node lock, teardown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from virtproof.lab.qemu.network import list_netns
from virtproof.lab.qemu.process import find_processes
from virtproof.reports.results import read_manifest, read_samples

from cli_run import CliRun

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.xdist_group("density")]

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """\
name: density-tiny
lab: {kind: qemu, nodes: 1, accel: tcg, tb_size_mib: 32}
guest: {image: micro, memory: 96Mi}
suites:
  density:
    step: 1
    max_vms: 2
    settle_s: 0.5
    overhead_samples: 1
    stop_when:
      - {metric: lost_vms, max: 0}
slo:
  - {metric: density.capacity_vms, stat: min, min: 1}
"""


def test_virtproof_run_density(root: None, tmp_path: Path, virtproof_run: Callable[..., CliRun]) -> None:
    scenario = tmp_path / "density-tiny.yaml"
    scenario.write_text(SCENARIO)
    run = virtproof_run(scenario, "--suite", "density", timeout=400)
    assert run.code == 0, run.output()
    run_dir = run.run_dir()
    samples = read_samples(run_dir).samples
    by_metric: dict[str, list[float]] = {}
    for s in samples:
        by_metric.setdefault(s.metric, []).append(s.value)
        assert s.labels.get("platform") == "qemu"
    assert by_metric["density.vms_running"] == [1, 2]
    assert by_metric["density.capacity_vms"] == [2]
    assert len(by_metric["density.time_to_ssh_s"]) == 2
    assert "density.primer_time_to_ssh_s" in by_metric
    stop = [s for s in samples if s.metric == "density.stop_reason"]
    assert [s.labels["reason"] for s in stop] == ["max_vms"]
    lab_id = read_manifest(run_dir)["lab"]["lab_id"]
    assert not find_processes(f"guest=vp-{lab_id}-"), "qemu left running after the run"
    assert not [ns for ns in list_netns() if ns.startswith(f"vp-{lab_id}-")], "namespaces left after the run"
