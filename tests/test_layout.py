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

Why these arrows:

- core is the neutral vocabulary (capabilities, the migration policy, errors and exit codes,
  processes, the state directory, the density metric names) and imports nothing of ours, so any
  layer may use it without pulling in anything else: scenarios import it because a scenario file
  is written in that vocabulary (a migration ``mode`` is ``core.migration``'s, a ``stop_when``
  metric ``core.density_metrics``'), and errors map to exit codes in one place.
- suites run a scenario against a lab, so they read the scenario's sections (scenarios), speak
  the shared vocabulary (core), measure (instruments), record samples (reports) and, in the V2V
  suite, run the pre-migration validation product itself (premigrate) rather than a copy of it.
  Of lab they see only the Platform seam, so a suite runs unchanged on every backend.

Imports are read from the source, function-local ones included; relative imports are resolved
against the file's package (from its path) and checked like the rest. ``test_no_import_cycles``
refuses import cycles inside the package, module-level and function-local alike.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def module_name(filename: str) -> str:
    """The import name of a product file: ``lab/qemu/lab.py`` is ``virtproof.lab.qemu.lab``."""
    path = Path(filename)
    parts = list((path.relative_to(ROOT) if path.is_absolute() else path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "virtproof" else ["virtproof", *parts])


def absolute(node: ast.ImportFrom, filename: str) -> str:
    """The module a ``from`` import names; a relative one resolved against the file's package."""
    if node.level == 0:
        return node.module or ""
    package = module_name(filename).split(".")
    if Path(filename).name != "__init__.py":
        package.pop()  # a module's relative imports start from the package that holds it
    if node.level > len(package):
        raise ValueError(f"{filename}:{node.lineno}: relative import beyond the top-level package")
    base = ".".join(package[: len(package) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported(node: ast.AST, filename: str) -> list[str]:
    """The modules one import statement names (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        module = absolute(node, filename)
        # ``from virtproof.lab import qemu`` imports virtproof.lab.qemu
        return [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return []


def imports(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, function-local and relative ones included."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        found += [(node.lineno, module) for module in imported(node, filename)]
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


def test_relative_imports_are_resolved_and_checked() -> None:
    assert imports("from . import guest\n", "lab/platform.py") == [(1, "virtproof.lab"), (1, "virtproof.lab.guest")]
    assert imports("from .platform import QemuPlatform\n", "lab/qemu/__init__.py")[0] == (
        1, "virtproof.lab.qemu.platform")
    found = violations("suites", "suites/engines/x.py", "from ...lab.qemu.platform import QemuPlatform\n")
    assert found and "past the Platform seam" in found[0], found
    assert violations("suites", "suites/engines/x.py", "from ...lab.platform import VM\n") == []
    found = violations("reports", "reports/x.py", "from ..lab import platform\n")
    assert found and "reports must not import lab" in found[0], found
    with pytest.raises(ValueError, match="beyond the top-level package"):
        imports("from .... import x\n", "lab/qemu/x.py")


def runtime_imports(tree: ast.Module, filename: str, *, function_local: bool) -> set[str]:
    """What importing the module imports: its module-level imports (and, with ``function_local``,
    those inside functions too), not those under ``if TYPE_CHECKING:``, which never run."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt] | list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not function_local:
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(list(node.orelse))
                continue
            found.update(imported(node, filename))
            visit(list(ast.iter_child_nodes(node)))

    visit(list(tree.body))
    return found


def import_graph(*, function_local: bool) -> dict[str, set[str]]:
    """Each product module and the product modules it imports (a name resolved to the deepest
    module that exists: ``from virtproof.lab.platform import VM`` is an arrow to lab.platform)."""
    files = {module_name(p.relative_to(ROOT).as_posix()): p for p in product_files()}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        rel = path.relative_to(ROOT).as_posix()
        targets = set()
        for name in runtime_imports(ast.parse(path.read_text(encoding="utf-8"), rel), rel,
                                    function_local=function_local):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module
    (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


@pytest.mark.parametrize("function_local", [False, True], ids=["module-level", "function-local-too"])
def test_no_import_cycles(function_local: bool) -> None:
    """No module of the package imports itself through others, not even from inside a function
    (a deferred import that closes a cycle hides a layering knot; lab.images.micro and memcheck
    once had one, over the cache directory, now ``lab.images.cacheroot``)."""
    assert cycles(import_graph(function_local=function_local)) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import virtproof.x\n"
    source += "def f():\n    import virtproof.y\n"
    tree = ast.parse(source)
    assert runtime_imports(tree, "lab/z.py", function_local=False) == {"typing", "typing.TYPE_CHECKING"}
    assert "virtproof.y" in runtime_imports(tree, "lab/z.py", function_local=True)


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
