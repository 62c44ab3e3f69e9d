"""What a validated source leaves behind: its samples in the run's store and its verdict file."""

from __future__ import annotations

import json
from pathlib import Path

from virtproof.premigrate.pipeline import SourceReport
from virtproof.premigrate.verdict import VERDICT_VALUE
from virtproof.reports.results import SampleSink


def record_samples(sink: SampleSink, report: SourceReport, target: str) -> None:
    labels = {
        "source": report.name,
        "kind": report.kind,
        "target": target,
        "format": report.image.format if report.image else "unknown",
        "verdict": report.verdict,
    }
    for stage, seconds in report.timings.items():
        sink.record(f"v2v.{stage}_s", seconds, "s", **labels)
    if report.conversion:
        sink.record("v2v.convert_mib_s", report.conversion.mib_per_s, "MiB/s", **labels)
        if report.bare_convert_s:
            bare = report.conversion.virtual_mib / report.bare_convert_s
            sink.record("v2v.bare_convert_mib_s", bare, "MiB/s", **labels)
            sink.record(
                "v2v.convert_vs_bare_pct", 100.0 * report.conversion.mib_per_s / bare if bare else 0, "%", **labels
            )
    if report.boot:
        for milestone, seconds in report.boot.milestones.items():
            sink.record(f"v2v.boot.{milestone}_s", seconds, "s", **labels)
    for severity in ("critical", "warning", "info"):
        count = sum(1 for f in report.findings if f.severity == severity)
        sink.record("v2v.findings", count, "count", severity=severity, **labels)
    sink.record("v2v.verdict", VERDICT_VALUE.get(report.verdict, 2), "code", **labels)  # type: ignore[call-overload]


def write_verdict(report: SourceReport, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{report.name}.verdict.json"
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return path
