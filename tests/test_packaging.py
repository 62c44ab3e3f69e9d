"""The wheel stands alone: built from this tree, installed into a clean virtualenv, away from the
repository, its ``virtproof`` validates, plans, compares and lists, with its package data."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project_root)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (built,) = out.glob("virtproof-*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed and nothing of the repository.

    Its third-party packages come from the development venv's site-packages, added as a plain
    path (so that venv's .pth files, the editable-install hook among them, are not run): this
    spares CI minutes of downloads while virtproof itself can only come from the wheel.
    tests/test_layout.py checks separately that every import is a declared dependency."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in sys.path if p.endswith("site-packages") and (Path(p) / "pydantic").is_dir())
    (site / "dev-dependencies.pth").write_text(deps + "\n")
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def test_the_wheel_claims_only_the_virtproof_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"virtproof"}
    for data in (
        "virtproof/lab/kubevirt/schemas/kubevirt-v1.9.0-openapi.json.gz",
        "virtproof/lab/kubevirt/schemas/cdi-v1.66.0-openapi.json.gz",
        "virtproof/deploy/rbac/virtproof-clusterrole.yaml",
        "virtproof/deploy/rbac/virtproof-role.yaml",
        "virtproof/reports/templates/report.html.j2",
        "virtproof/lab/images/init.sh",
        "virtproof/scenarios/quickstart.yaml",
        "virtproof/suites/test_boot.py",
        "virtproof/suites/conftest.py",
        "virtproof/instruments/locustfile.py",
    ):
        assert data in names, data


def _cli(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "virtproof"), *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd,
    )  # fmt: skip


def test_the_installed_cli_works_away_from_the_repository(
    clean_venv: Path, tmp_path: Path, project_root: Path
) -> None:
    for name in ("quickstart.yaml", "kind-kubevirt.yaml"):
        (tmp_path / name).write_text((project_root / "scenarios" / name).read_text())
    proc = _cli(clean_venv, tmp_path, "validate", "quickstart.yaml", "kind-kubevirt.yaml")
    assert proc.returncode == 0 and proc.stdout.count("ok: ") == 2, proc.stdout + proc.stderr
    plan = _cli(clean_venv, tmp_path, "lab", "plan", "kind-kubevirt.yaml")
    assert plan.returncode == 0, plan.stderr
    assert "kind: ClusterRole" in plan.stdout and "virtualmachineinstancemigrations" in plan.stdout, plan.stdout[-2000:]
    assert _cli(clean_venv, tmp_path, "premigrate", "--help").returncode == 0
    images = _cli(clean_venv, tmp_path, "images", "list")
    assert images.returncode == 0, images.stderr
    python = clean_venv / "bin" / "python"
    make = (
        "import sys\nfrom pathlib import Path\nfrom virtproof.reports.results import RunDirectory\n"
        "for name, v in (('a', 1.0), ('b', 2.0)):\n"
        "    run = RunDirectory.create(Path(sys.argv[1]), name, {'scenario': {'name': 't'}})\n"
        "    run.sink.record('boot.time_to_ssh_s', v, 's')\n    run.finish('passed')\n"
    )
    subprocess.run([str(python), "-c", make, str(tmp_path / "runs")], check=True, timeout=120, cwd=tmp_path)
    compare = _cli(clean_venv, tmp_path, "compare", "runs/a", "runs/b", "-o", "cmp")
    assert compare.returncode == 0, compare.stderr
    assert (tmp_path / "cmp" / "comparison.html").exists()
    where = subprocess.run(
        [str(python), "-c", "import json, virtproof.lab; print(json.dumps(virtproof.lab.__file__))"],
        capture_output=True, text=True, check=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert str(clean_venv) in json.loads(where.stdout), "virtproof.lab came from outside the clean venv"
