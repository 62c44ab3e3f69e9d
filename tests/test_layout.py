"""The shape of the code: which layer may import which, the Platform seam has no back doors,
and every package folder is installed.

Layers (each top-level folder is one, installed as ``virtproof.<folder>``):

    core         imports nothing of ours            (capabilities, migration policy, errors, processes)
    scenarios    core                               (the scenario schema and loader)
    instruments  core                               (prober, load, host metrics, quantiles, locks)
    reports      core, scenarios, instruments       (never a lab, a suite or the front door)
    lab          core, scenarios, instruments       (labs and backends)
    premigrate   core, scenarios, instruments, lab, reports
    suites       core, scenarios, instruments, reports, premigrate, and of lab only its seam:
                 virtproof.lab.platform and virtproof.lab.guest
    virtproof    everything (the front door: CLI, commands, the runner, pytest plugins)
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "scenarios", "instruments", "reports", "lab", "premigrate", "suites")
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "scenarios": {"core"},
    "instruments": {"core"},
    "reports": {"core", "scenarios", "instruments"},
    "lab": {"core", "scenarios", "instruments"},
    "premigrate": {"core", "scenarios", "instruments", "lab", "reports"},
    "suites": {"core", "scenarios", "instruments", "reports", "premigrate"},
    "front": set(LAYERS),
}
SEAM = {"virtproof.lab.platform", "virtproof.lab.guest"}
PROBES = ("getattr", "hasattr")
OLD_TOP_LEVEL = {"lab", "reports", "scenarios", "suites", "instruments", "premigrate", "core"}


@dataclass(frozen=True)
class Arrow:
    source: str  # file, relative to the repository
    line: int
    module: str  # what it imports


def layer_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "virtproof":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "front"


def layer_of_file(path: Path) -> str:
    top = path.relative_to(ROOT).parts[0]
    return top if top in LAYERS else "front"


def imports(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from virtproof.lab import qemu`` imports virtproof.lab.qemu
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(layer: str, rel: str, source: str) -> list[str]:
    out = []
    for line, module in imports(source, rel):
        if module.split(".")[0] in OLD_TOP_LEVEL:
            out.append(f"{rel}:{line}: imports {module} by its folder name; use virtproof.{module}")
            continue
        target = layer_of_module(module)
        if target is None or target == layer or layer == "front":
            continue
        if layer == "suites" and target == "lab":
            if not any(module == seam or module.startswith(seam + ".") for seam in SEAM):
                out.append(f"{rel}:{line}: suites reach past the Platform seam into {module}")
            continue
        if target not in ALLOWED[layer]:
            out.append(f"{rel}:{line}: {layer} must not import {target} ({module})")
    return out


def product_files() -> list[Path]:
    folders = [ROOT / name for name in (*LAYERS, "virtproof")]
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def test_every_import_follows_the_layers() -> None:
    found = []
    for path in product_files():
        rel = path.relative_to(ROOT).as_posix()
        found += violations(layer_of_file(path), rel, path.read_text(encoding="utf-8"))
    assert found == []


def test_the_checker_catches_arrows_the_wrong_way() -> None:
    """The rules bite: each of these arrows (all present before the reorganisation) is refused."""
    cases = {
        ("suites", "from virtproof.lab.qemu.platform import QemuPlatform"): "past the Platform seam",
        ("suites", "from virtproof.lab.factory import open_lab"): "past the Platform seam",
        ("suites", "import virtproof.commands.premigrate"): None,
        ("reports", "from virtproof.lab.platform import Capability"): "reports must not import lab",
        ("reports", "from virtproof import __version__"): None,
        ("scenarios", "from virtproof.lab.platform import MigrationPolicy"): "scenarios must not import lab",
        ("lab", "from virtproof.suites.factory import VMFactory"): "lab must not import suites",
        ("instruments", "from virtproof.lab.qemu.state import state_root"): "instruments must not import lab",
        ("core", "from virtproof.scenarios.model import Scenario"): "core must not import scenarios",
        ("suites", "from lab.platform import VM"): "by its folder name",
    }
    for (layer, line), expected in cases.items():
        found = violations(layer, f"{layer}/x.py", line + "\n")
        if expected is None:  # an import of the front door from a layer
            assert found, f"{layer}: {line!r} should be refused"
        else:
            assert found and expected in found[0], (layer, line, found)
    assert violations("suites", "suites/x.py", "from virtproof.lab.platform import VM\n") == []
    assert violations("front", "virtproof/x.py", "from virtproof.lab.qemu.lab import QemuLabHandle\n") == []


def test_suites_probe_no_backend_attributes() -> None:
    """Optional features come through lab.platform's protocols and ``feature()``, never getattr."""
    offenders = []
    for path in sorted((ROOT / "suites").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_import_patched_with_noqa_e402() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}" for p in product_files() if "noqa: E402" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = set(config["tool"]["setuptools"]["packages"])
    mapping = config["tool"]["setuptools"]["package-dir"]
    folders = {folder: name for name, folder in mapping.items()}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in folders:
            found.add(".".join([folders[rel.parts[0]], *rel.parts[1:]]))
    assert found - declared == set(), "packages missing from pyproject's [tool.setuptools] packages"
    data_only = {name for name in declared - found}
    for name in data_only:  # listed without an __init__.py: must be a folder of package data
        top, *rest = name.split(".")[1:]
        folder = ROOT / mapping[f"virtproof.{top}"] / Path(*rest)
        assert folder.is_dir() and not (folder / "__init__.py").exists(), name
        assert name in config["tool"]["setuptools"]["package-data"], f"{name}: listed, but no package data"


SYSTEM_MODULES = {"guestfs": "Debian's python3-guestfs, linked into the venv by scripts/link-guestfs"}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    import sys
    from importlib.metadata import packages_distributions

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        for dep in config["project"]["dependencies"]
    }
    owners = packages_distributions()
    missing = []
    for path in product_files():
        for line, module in imports(path.read_text(encoding="utf-8"), str(path)):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "virtproof" or top in SYSTEM_MODULES:
                continue
            dists = {d.lower() for d in owners.get(top, [top])}
            if not dists & declared:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module} ({', '.join(sorted(dists))})")
    assert missing == [], "imported directly but not declared in pyproject's dependencies"
