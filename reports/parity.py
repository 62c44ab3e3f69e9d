"""The feature-parity matrix: capabilities x outcome, from outcomes.jsonl and the manifest.

``<run_dir>/outcomes.jsonl`` has one JSON object per pytest test (written by ``virtproof run``):
``{"nodeid", "suite", "outcome": passed|failed|skipped|error, "duration_s", "reason",
"capabilities": [...]}``. The manifest's ``platform.capabilities`` says what is offered.
A row per capability; its state is, first match wins: ``not offered`` (the platform does not
declare it), ``failed`` (a test needing it failed or errored), ``passed``, ``skipped`` (with
the reasons), ``not tested`` (offered, but no test needed it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from virtproof.core.capabilities import Capability

log = logging.getLogger(__name__)

OUTCOMES = "outcomes.jsonl"
CellState = Literal["passed", "failed", "skipped", "not offered", "not tested"]
_OUTCOME_NAMES = ("passed", "failed", "skipped", "error")


@dataclass(frozen=True)
class TestOutcome:
    nodeid: str
    suite: str
    outcome: str
    duration_s: float
    reason: str | None
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class ParityCell:
    capability: str
    state: CellState
    passed: int
    failed: int
    skipped: int
    reasons: tuple[str, ...]

    @property
    def text(self) -> str:
        if self.state in ("not offered", "not tested") and not self.reasons:
            return self.state
        counts = f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
        return f"{self.state} ({counts})"


@dataclass(frozen=True)
class ParityMatrix:
    platform: str
    offered: tuple[str, ...] | None
    cells: tuple[ParityCell, ...]
    outcomes: tuple[TestOutcome, ...]
    invalid_lines: int

    def cell(self, capability: str) -> ParityCell | None:
        return next((c for c in self.cells if c.capability == capability), None)

    def suite_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            row = counts.setdefault(o.suite, dict.fromkeys(_OUTCOME_NAMES, 0))
            row[o.outcome] = row.get(o.outcome, 0) + 1
        return counts


def _outcome(raw: Any) -> TestOutcome | None:
    if not isinstance(raw, dict):
        return None
    outcome = raw.get("outcome")
    caps = raw.get("capabilities") or []
    if outcome not in _OUTCOME_NAMES or not isinstance(caps, list):
        return None
    try:
        duration = float(raw.get("duration_s") or 0.0)
    except (TypeError, ValueError):
        duration = 0.0
    reason = raw.get("reason")
    return TestOutcome(
        nodeid=str(raw.get("nodeid", "?")),
        suite=str(raw.get("suite") or "?"),
        outcome=str(outcome),
        duration_s=duration,
        reason=str(reason) if reason is not None else None,
        capabilities=tuple(str(c) for c in caps),
    )


def read_outcomes(run_dir: Path) -> tuple[tuple[TestOutcome, ...], int]:
    path = run_dir / OUTCOMES
    if not path.exists():
        return (), 0
    outcomes: list[TestOutcome] = []
    invalid = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                parsed = _outcome(json.loads(line))
            except ValueError:
                parsed = None
            if parsed is None:
                invalid += 1
            else:
                outcomes.append(parsed)
    if invalid:
        log.warning("%s: skipped %d invalid line(s)", path, invalid)
    return tuple(outcomes), invalid


def platform_of(manifest: Mapping[str, Any]) -> tuple[str, tuple[str, ...] | None]:
    platform = manifest.get("platform")
    if not isinstance(platform, Mapping):
        return (str(platform) if platform else "?"), None
    caps = platform.get("capabilities")
    offered = tuple(str(c) for c in caps) if isinstance(caps, list) else None
    return str(platform.get("name") or "?"), offered


def _state(offered: bool, passed: int, failed: int, skipped: int) -> CellState:
    if not offered:
        return "not offered"
    if failed:
        return "failed"
    if passed:
        return "passed"
    if skipped:
        return "skipped"
    return "not tested"


def parity_matrix(run_dir: Path, manifest: Mapping[str, Any]) -> ParityMatrix:
    name, offered = platform_of(manifest)
    if not (run_dir / OUTCOMES).exists():
        return ParityMatrix(name, offered, (), (), 0)
    outcomes, invalid = read_outcomes(run_dir)
    needed = {c for o in outcomes for c in o.capabilities}
    known = [c.value for c in Capability]
    rows = known + sorted((needed | set(offered or ())) - set(known))
    cells = []
    for capability in rows:
        tests = [o for o in outcomes if capability in o.capabilities]
        passed = sum(o.outcome == "passed" for o in tests)
        failed = sum(o.outcome in ("failed", "error") for o in tests)
        skipped = sum(o.outcome == "skipped" for o in tests)
        reasons = tuple(sorted({o.reason for o in tests if o.outcome != "passed" and o.reason}))
        is_offered = offered is None or capability in offered
        cells.append(ParityCell(capability, _state(is_offered, passed, failed, skipped),
                                passed, failed, skipped, reasons))
    return ParityMatrix(name, offered, tuple(cells), outcomes, invalid)
