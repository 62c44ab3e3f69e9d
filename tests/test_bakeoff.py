"""A scenario with ``labs:`` runs on each lab, then renders one comparison of the runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from virtproof.lab.images.micro import GuestImage
from virtproof.reports.results import read_manifest

from cli_run import CliRun

pytestmark = pytest.mark.qemu


def test_bakeoff_runs_every_lab_and_compares(
    root: None,
    tmp_path: Path,
    project_root: Path,
    virtproof_run: Callable[..., CliRun],
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    scenario = tmp_path / "bake.yaml"
    scenario.write_text((project_root / "scenarios/bakeoff.yaml").read_text().replace("count: 3", "count: 1"))
    run = virtproof_run(scenario, timeout=900)
    results = run.results
    assert run.code == 0, run.output()
    out = Path(run.proc.stdout.strip().splitlines()[-1])
    assert out.name.startswith("comparison-") and (out / "comparison.html").exists()
    runs = sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("comparison-"))
    assert len(runs) == 2
    machines = set()
    for run in runs:
        manifest = read_manifest(run)
        assert manifest["status"] == "passed"
        machines.add(next(line for line in (run / "scenario.yaml").read_text().splitlines() if "machine:" in line))
        assert leftovers(run.name) == []
    assert len(machines) == 2, "each run records its own lab"
    html = (out / "comparison.html").read_text()
    assert all(run.name in html for run in runs)
