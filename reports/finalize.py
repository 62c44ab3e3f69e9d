"""The end of every run: statistics, gates, report.html, summary.md, junit.xml, stats.csv/json.

``virtproof run`` calls ``finalize_run`` once the suites are done. It reads what the run
recorded (a corrupt samples line is skipped, counted and warned about; nothing readable is
dropped), evaluates the SLOs and the optional baseline regression, and writes every output.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from virtproof.reports import charts as chart_mod
from virtproof.reports.frame import RunInfo, read_run
from virtproof.reports.gates import GateResult, evaluate_regression, evaluate_slos
from virtproof.reports.junit import write_junit
from virtproof.reports.parity import parity_matrix
from virtproof.reports.render import integrity_rows, render_run
from virtproof.reports.results import NotARunDirectory
from virtproof.reports.stats import compute_stats, worst_samples
from virtproof.reports.summary import render_summary
from virtproof.scenarios.model import SLO

log = logging.getLogger(__name__)

DEFAULT_MAX_REGRESSION = 0.10


@dataclass(frozen=True)
class FinalizeResult:
    gates_passed: bool
    gate_results: tuple[GateResult, ...]
    files: tuple[Path, ...]
    corrupt_lines: int = 0


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_stats(stats: pd.DataFrame, out_dir: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / "stats.csv", out_dir / "stats.json"
    stats.to_csv(csv_path, index=False)
    records = [{k: _clean(v) for k, v in r.items()} for r in stats.to_dict("records")]
    body = {**extra, "stats": records}
    json_path.write_text(json.dumps(body, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return csv_path, json_path


def _gates_json(gates: Sequence[GateResult]) -> list[dict[str, Any]]:
    return [
        {"name": g.name, "kind": g.kind, "metric": g.metric, "stat": g.stat, "passed": g.passed,
         "observed": _clean(g.observed), "bound": g.bound, "reason": g.reason, "unit": g.unit,
         "labels": dict(g.labels), "p_value": _clean(g.p_value), "baseline": _clean(g.baseline)}
        for g in gates
    ]


def _notes(run: RunInfo, invalid_outcomes: int) -> list[str]:
    notes = []
    if run.corrupt_lines:
        notes.append(f"{run.corrupt_lines} corrupt line(s) in samples.jsonl were skipped "
                     f"({run.samples} samples read).")
    if invalid_outcomes:
        notes.append(f"{invalid_outcomes} invalid line(s) in outcomes.jsonl were skipped.")
    if run.status in ("incomplete", "running"):
        notes.append(f"This run is {run.status}: its numbers may be partial.")
    return notes


def _baseline_gates(frame: pd.DataFrame, baseline: Path, max_regression: float) -> list[GateResult]:
    try:
        _, base_frame = read_run(baseline)
    except NotARunDirectory as exc:
        return [GateResult(f"regression vs baseline {baseline}", "regression", "*", "p50", False, None,
                           f"<= {max_regression * 100:g}% worse", f"baseline unusable: {exc}")]
    gates = evaluate_regression(frame, base_frame, max_regression)
    if not gates:
        gates = [GateResult(f"regression vs baseline {baseline}", "regression", "*", "p50", False, None,
                            f"<= {max_regression * 100:g}% worse", "no metric in common with the baseline")]
    return gates


def finalize_run(
    run_dir: Path,
    slos: Sequence[SLO],
    baseline: Path | None = None,
    max_regression: float | None = None,
) -> FinalizeResult:
    run_dir = Path(run_dir)
    run, frame = read_run(run_dir)
    stats = compute_stats(frame)
    gates = evaluate_slos(frame, slos)
    if baseline is not None:
        limit = DEFAULT_MAX_REGRESSION if max_regression is None else max_regression
        gates += _baseline_gates(frame, Path(baseline), limit)
    matrix = parity_matrix(run_dir, run.manifest)
    notes = _notes(run, matrix.invalid_lines)
    files: list[Path] = list(write_stats(stats, run_dir, {
        "run_id": run.run_id, "scenario": run.scenario_name, "status": run.status,
        "samples": run.samples, "corrupt_lines": run.corrupt_lines,
    }))
    gates_path = run_dir / "gates.json"
    gates_path.write_text(json.dumps(_gates_json(gates), indent=1) + "\n", encoding="utf-8")
    files.append(gates_path)
    junit_path, junit_note = write_junit(run_dir, run.run_id, gates)
    files.append(junit_path)
    if junit_note:
        notes.append(junit_note)
    summary_path = run_dir / "summary.md"
    summary = render_summary(run, matrix.platform, stats, gates, matrix, notes)
    summary_path.write_text(summary, encoding="utf-8")
    files.append(summary_path)
    html = render_run(run, stats, gates, chart_mod.run_charts(frame), matrix, notes, worst_samples(frame),
                      integrity_rows(frame))
    report_path = run_dir / "report.html"
    report_path.write_text(html, encoding="utf-8")
    files.append(report_path)
    passed = all(g.passed for g in gates)
    for gate in gates:
        if not gate.passed:
            log.warning("gate failed: %s: %s", gate.name, gate.reason)
    return FinalizeResult(passed, tuple(gates), tuple(files), run.corrupt_lines)
