"""Fixtures shared by virtproof's own tests, and the skip policy.

Fixtures: ``project_root``, ``virtproof_cmd``, ``virtproof_run`` (the CLI as a user runs it),
``root`` (skips with "not root:" when not root), ``micro_image``, ``leftovers``.

Skip policy: a skip whose reason is not in ``allowed_skips.ALLOWED_SKIP_REASONS`` fails the
session (exit status 1), listed at the end of the run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from virtproof.core.processes import is_root
from virtproof.core.statedir import default_state_root
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.images.store import ImageStore

from allowed_skips import allowed
from cli_run import CliRun

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def virtproof_cmd() -> list[str]:
    """The installed console script, run as a user would."""
    exe = Path(sys.executable).with_name("virtproof")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "virtproof"]


@pytest.fixture(scope="session")
def micro_image() -> GuestImage:
    return ImageStore.default().get("micro")


def _leftovers(marker: str) -> list[str]:
    found = []
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False).stdout
    found += [f"process: {line}" for line in ps.splitlines() if marker in line]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"netns: {line}" for line in ns.splitlines() if marker in line]
    state = default_state_root() / "labs"
    if state.is_dir():
        found += [f"dir: {p}" for p in state.iterdir() if marker in p.name]
    return found


@pytest.fixture(scope="session")
def leftovers() -> Callable[[str], list[str]]:
    """``leftovers(marker)``: qemu processes, namespaces and state dirs whose names carry ``marker``."""
    return _leftovers


NOT_ROOT = "not root: network namespaces, bridges and taps need root"


@pytest.fixture
def root() -> None:
    """Skip (an allowed reason) unless running as root: namespaces, bridges and taps need it."""
    if not is_root():
        pytest.skip(NOT_ROOT)


@pytest.fixture(scope="module")
def module_root() -> None:
    """``root`` for module-scoped fixtures (a lab brought up once per module)."""
    if not is_root():
        pytest.skip(NOT_ROOT)


@pytest.fixture
def virtproof_run(virtproof_cmd: list[str], project_root: Path, tmp_path: Path) -> Callable[..., CliRun]:
    """``virtproof_run(SCENARIO, *ARGS, timeout=600)``: ``virtproof run SCENARIO --results DIR ARGS``."""

    def run(scenario: Path, *args: str, results: Path | None = None, timeout: float = 600) -> CliRun:
        out = results or tmp_path / "results"
        proc = subprocess.run(
            [*virtproof_cmd, "run", str(scenario), "--results", str(out), *args],
            capture_output=True, text=True, timeout=timeout, check=False, cwd=project_root,
        )  # fmt: skip
        return CliRun(proc, out)

    return run


# --- the skip policy ---------------------------------------------------------------------
# Held to tests/allowed_skips.py: skips at run time and at collection (a module-level
# ``pytest.skip(..., allow_module_level=True)`` or ``pytest.importorskip``, which never reach
# pytest_runtest_logreport). An xfail or an xpass is refused outright: a test that is expected
# to fail proves nothing either.

_refused_skips: list[str] = []


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if hasattr(report, "wasxfail"):
        outcome = "xpass" if report.passed else "xfail"
        _refused_skips.append(f"{report.nodeid}: {outcome} ({report.wasxfail or 'no reason'}): xfail is not allowed")
    elif report.skipped:
        reason = _skip_reason(report)
        if not allowed(reason):
            _refused_skips.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        reason = _skip_reason(report)
        if not allowed(reason):
            _refused_skips.append(f"{report.nodeid}: {reason} (at collection)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # NO_TESTS_COLLECTED: every module was skipped at collection
    if _refused_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _refused_skips:
        terminalreporter.section("skips and xfails that are not allowed (tests/allowed_skips.py)", red=True)
        for line in _refused_skips:
            terminalreporter.write_line(line)
