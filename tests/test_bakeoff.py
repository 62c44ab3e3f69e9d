"""A scenario with ``labs:`` runs on each lab, then renders one comparison of the runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.images.micro import GuestImage
from reports.results import read_manifest

pytestmark = pytest.mark.qemu


def test_bakeoff_runs_every_lab_and_compares(
    tmp_path: Path,
    virtproof_cmd: list[str],
    project_root: Path,
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    scenario = tmp_path / "bake.yaml"
    scenario.write_text((project_root / "scenarios/bakeoff.yaml").read_text().replace("count: 3", "count: 1"))
    results = tmp_path / "results"
    proc = subprocess.run(
        [*virtproof_cmd, "run", str(scenario), "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=project_root,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
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
