"""The wheel stands alone: built from this tree, installed into a clean virtualenv, away from the
repository, its ``virtproof`` validates, plans, compares and lists, with its package data."""

from __future__ import annotations

import ast
import glob
import json
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

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
    """A new virtualenv with only the wheel installed, its dependencies resolved by pip from the
    package index as a user's install resolves them: nothing of the repository or the
    development venv. (Minutes on a cold pip cache.)"""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:]
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


def _pyproject(project_root: Path) -> dict[str, Any]:
    return tomllib.loads((project_root / "pyproject.toml").read_text())


def _folder(package: str, package_dirs: dict[str, str], project_root: Path) -> Path:
    """The repository folder of an installed package name, through pyproject's package-dir."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        base = package_dirs.get(".".join(parts[:cut]))
        if base is not None:
            return project_root / base / Path(*parts[cut:])
    raise AssertionError(f"{package}: not under any package-dir entry")


def test_every_package_data_pattern_matches_a_file(project_root: Path) -> None:
    config = _pyproject(project_root)["tool"]["setuptools"]
    empty = []
    for package, patterns in config["package-data"].items():
        folder = _folder(package, config["package-dir"], project_root)
        for pattern in patterns:
            matched = [m for m in glob.glob(str(folder / pattern), recursive=True) if Path(m).is_file()]
            if not matched:
                empty.append(f"{package}: {pattern} (in {folder.relative_to(project_root)})")
    assert empty == [], "package-data patterns that match no file"


def _name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower().replace("_", "-")


def test_every_third_party_import_of_the_tests_is_declared(project_root: Path) -> None:
    """What the tests import themselves is in pyproject's dependencies or its dev extra (a test
    must not lean on a package that only happens to come with another one)."""
    project = _pyproject(project_root)["project"]
    declared = {_name(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]}
    tests = project_root / "tests"
    local = {p.stem for p in tests.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    owners = packages_distributions()
    missing = []
    for path in sorted([*tests.rglob("*.py"), project_root / "conftest.py"]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "virtproof":
                    continue
                dists = {_name(d) for d in owners.get(top, [top])}
                if not dists & declared:
                    missing.append(f"{path.relative_to(project_root)}:{node.lineno}: {module} ({', '.join(dists)})")
    assert missing == [], "imported by the tests but not declared in pyproject"
