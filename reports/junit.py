"""junit.xml: pytest's own results (``pytest-junit.xml`` if present) plus one testcase per gate."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from virtproof.reports.gates import GateResult

log = logging.getLogger(__name__)

PYTEST_JUNIT = "pytest-junit.xml"
_COUNTERS = ("tests", "failures", "errors", "skipped")


def _pytest_suites(path: Path) -> tuple[list[ET.Element], str | None]:
    if not path.exists():
        return [], None
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        log.warning("%s: unreadable, not merged: %s", path, exc)
        return [], f"{path.name} is unreadable and was not merged into junit.xml: {exc}"
    if root.tag == "testsuite":
        return [root], None
    return [s for s in root if s.tag == "testsuite"], None


def gate_suite(gates: Sequence[GateResult]) -> ET.Element:
    failures = sum(not g.passed for g in gates)
    suite = ET.Element("testsuite", name="virtproof.gates", tests=str(len(gates)),
                       failures=str(failures), errors="0", skipped="0", time="0")
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname=f"virtproof.{gate.kind}", name=gate.name, time="0")
        if not gate.passed:
            failure = ET.SubElement(case, "failure", message=gate.reason, type=f"{gate.kind}-gate")
            failure.text = (f"{gate.name}\nobserved: {gate.observed} {gate.unit}\n"
                            f"bound: {gate.bound}\n{gate.reason}")
        elif gate.reason:
            ET.SubElement(case, "system-out").text = gate.reason
    return suite


def write_junit(run_dir: Path, run_id: str, gates: Sequence[GateResult]) -> tuple[Path, str | None]:
    """Write ``<run_dir>/junit.xml``; returns its path and a note when pytest's file was unreadable."""
    suites, note = _pytest_suites(run_dir / PYTEST_JUNIT)
    root = ET.Element("testsuites", name=f"virtproof {run_id}")
    for suite in [*suites, gate_suite(gates)]:
        root.append(suite)
    for counter in _COUNTERS:
        total = 0
        for suite in root:
            try:
                total += int(suite.get(counter, "0"))
            except ValueError:
                continue
        root.set(counter, str(total))
    path = run_dir / "junit.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path, note
