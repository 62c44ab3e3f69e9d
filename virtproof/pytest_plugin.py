"""The pytest plugin ``virtproof run`` loads: options, capability markers, per-test outcomes.

Outcomes go to ``<run_dir>/outcomes.jsonl`` (written by the controlling process only, so
xdist workers do not duplicate them): nodeid, suite, outcome, duration, skip reason and the
capabilities the test needed. The report turns them into the feature-parity matrix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path

import pytest

OUTCOMES = "outcomes.jsonl"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtproof")
    group.addoption("--vp-run-dir", default=None, help="the run directory (set by `virtproof run`)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "capability(*names): platform capabilities the test needs")
    run_dir = config.getoption("vp_run_dir")
    if run_dir:
        os.environ["VIRTPROOF_RUN_DIR"] = str(Path(run_dir).resolve())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    names = [str(n) for mark in item.iter_markers("capability") for n in mark.args]
    report.user_properties.append(("capabilities", ",".join(names)))
    return report


def _suite_of(nodeid: str) -> str:
    name = Path(nodeid.split("::", 1)[0]).stem
    return name.removeprefix("test_")


def _reason(report: pytest.TestReport) -> str | None:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if report.failed:
        text = str(report.longrepr)
        return text.strip().splitlines()[-1][:300] if text.strip() else "failed"
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config_run_dir = os.environ.get("VIRTPROOF_RUN_DIR")
    if not config_run_dir or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = report.outcome if report.when == "call" else ("skipped" if report.skipped else "error")
        caps = dict(report.user_properties).get("capabilities", "")
        line = {
            "nodeid": report.nodeid,
            "suite": _suite_of(report.nodeid),
            "outcome": outcome,
            "duration_s": round(report.duration, 3),
            "reason": _reason(report),
            "capabilities": [c for c in str(caps).split(",") if c],
        }
        with open(Path(config_run_dir) / OUTCOMES, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
