"""Findings: what inspection found, how bad it is for the move, and how to fix it.

Severities follow Forklift's validation "concerns": ``critical`` (will not boot or not be
reachable on the target), ``warning`` (works, but something is lost or must be done by hand),
``info`` (a fact worth knowing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["critical", "warning", "info"]
SEVERITY_ORDER: dict[Severity, int] = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    fix: str = ""
    fixable: bool = False  # ``--fix`` knows how to repair it

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.code))


def worst(findings: list[Finding]) -> Severity | None:
    if not findings:
        return None
    return min((f.severity for f in findings), key=lambda s: SEVERITY_ORDER[s])
