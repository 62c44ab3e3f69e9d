"""Compare runs side by side: the vendor bake-off.

Per metric: each run's p50 (and p95, n), the best run (``virtproof.reports.direction`` says whether
lower or higher wins), each run's ratio to the best (>= 1, 1 is best: worse/best for
lower-is-better, best/worse for higher-is-better), and whether its gap to the reference is
significant (one-sided Mann-Whitney U, p < 0.05; the reference is ``--baseline`` when given,
else the best run). Runs of different scenarios are compared on the metrics they all have;
the others are listed with the runs that have them. Incomplete runs are shown and marked.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from virtproof.reports import charts as chart_mod
from virtproof.reports.direction import Direction, better
from virtproof.reports.frame import LoadedRuns, RunInfo, load
from virtproof.reports.gates import ALPHA, fmt, significance
from virtproof.reports.parity import ParityMatrix, parity_matrix, platform_of
from virtproof.reports.render import KEY_METRICS, render_comparison_html
from virtproof.reports.stats import FloatArray, values_by_run_metric
from virtproof.reports.summary import md


@dataclass(frozen=True)
class RunStat:
    run_id: str
    count: int
    p50: float
    p95: float
    ratio_to_best: float
    p_value: float | None
    significant: bool | None


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    unit: str
    direction: Direction
    best_run: str
    per_run: tuple[RunStat, ...]

    def stat_for(self, run_id: str) -> RunStat | None:
        return next((s for s in self.per_run if s.run_id == run_id), None)


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunInfo, ...]
    baseline_id: str | None
    metrics: tuple[MetricComparison, ...]
    not_shared: tuple[tuple[str, tuple[str, ...]], ...]
    scenarios: dict[str, str]
    matrices: dict[str, ParityMatrix]

    @property
    def different_scenarios(self) -> bool:
        return len(set(self.scenarios.values())) > 1


def _ratio(value: float, best: float, direction: Direction) -> float:
    worse, better_value = (value, best) if direction == "lower" else (best, value)
    if better_value == 0:
        return 1.0 if worse == 0 else math.inf
    return worse / better_value


def compare_loaded(loaded: LoadedRuns, baseline_id: str | None = None) -> Comparison:
    df = loaded.frame
    run_ids = [r.run_id for r in loaded.runs]
    values = values_by_run_metric(df)
    units = df.groupby("metric", observed=True)["unit"].first().astype("object").to_dict() if len(df) else {}
    by_metric: dict[str, dict[str, FloatArray]] = {}
    for (run_id, metric), v in values.items():
        by_metric.setdefault(metric, {})[run_id] = v
    metrics: list[MetricComparison] = []
    not_shared: list[tuple[str, tuple[str, ...]]] = []
    for metric in sorted(by_metric):
        per_run = by_metric[metric]
        if len(per_run) < len(run_ids):
            not_shared.append((metric, tuple(r for r in run_ids if r in per_run)))
            continue
        unit = str(units.get(metric, ""))
        direction = better(metric, unit)
        p50 = {r: float(np.median(per_run[r])) for r in run_ids}
        pick = min if direction == "lower" else max
        best_run = pick(run_ids, key=lambda r: p50[r])
        reference = baseline_id if baseline_id in per_run else best_run
        stats = []
        for run_id in run_ids:
            v = per_run[run_id]
            p: float | None = None
            if run_id != reference:
                p = significance(v, per_run[reference], direction)
            stats.append(RunStat(run_id, int(v.size), p50[run_id], float(np.percentile(v, 95)),
                                 _ratio(p50[run_id], p50[best_run], direction), p,
                                 None if p is None else p < ALPHA))
        metrics.append(MetricComparison(metric, unit, direction, best_run, tuple(stats)))
    matrices = {r.run_id: parity_matrix(r.path, r.manifest) for r in loaded.runs}
    return Comparison(loaded.runs, baseline_id, tuple(metrics), tuple(not_shared),
                      {r.run_id: r.scenario_name for r in loaded.runs}, matrices)


def _notes(c: Comparison) -> list[str]:
    notes = []
    if c.different_scenarios:
        names = ", ".join(f"{r} ran {s}" for r, s in c.scenarios.items())
        notes.append(f"These runs are of different scenarios ({names}): only the metrics they all "
                     f"share are compared; {len(c.not_shared)} metric(s) differ and are listed apart.")
    elif c.not_shared:
        notes.append(f"{len(c.not_shared)} metric(s) are missing from some runs and are listed apart.")
    for run in c.runs:
        if run.status in ("incomplete", "running"):
            notes.append(f"Run {run.run_id} is {run.status.upper()}: shown, but its numbers may be partial.")
        if run.corrupt_lines:
            notes.append(f"Run {run.run_id}: {run.corrupt_lines} corrupt samples line(s) skipped.")
    return notes


def _parity_rows(c: Comparison) -> list[dict[str, Any]]:
    capabilities: list[str] = []
    for matrix in c.matrices.values():
        capabilities.extend(cell.capability for cell in matrix.cells if cell.capability not in capabilities)
    rows = []
    for capability in capabilities:
        cells = {}
        for run_id, matrix in c.matrices.items():
            cell = matrix.cell(capability)
            cells[run_id] = cell
        rows.append({"capability": capability, "cells": cells})
    return rows


def _run_rows(c: Comparison) -> list[dict[str, Any]]:
    rows = []
    for run in c.runs:
        platform, _ = platform_of(run.manifest)
        host = run.manifest.get("host")
        versions = run.manifest.get("versions")
        rows.append({
            "run": run, "platform": platform,
            "host": dict(host) if isinstance(host, dict) else {},
            "versions": dict(versions) if isinstance(versions, dict) else {},
            "baseline": run.run_id == c.baseline_id,
        })
    return rows


def _charts(c: Comparison, loaded: LoadedRuns) -> list[chart_mod.Chart]:
    values = values_by_run_metric(loaded.frame)
    charts: list[chart_mod.Chart] = []
    shared = {m.metric for m in c.metrics}
    for metric in [m for m in KEY_METRICS if m in shared][:3]:
        chart = chart_mod.comparison_cdf(
            [(r.run_id, values.get((r.run_id, metric), np.empty(0))) for r in c.runs], metric)
        if chart:
            charts.append(chart)
    if len(c.runs) > 1:
        chart = chart_mod.ratio_to_best(
            [(m.metric, [(s.run_id, s.ratio_to_best) for s in m.per_run if math.isfinite(s.ratio_to_best)])
             for m in c.metrics])
        if chart:
            charts.append(chart)
    return charts


def _markdown(c: Comparison, notes: Sequence[str]) -> str:
    ids = [r.run_id for r in c.runs]
    lines = ["## virtproof comparison", ""]
    lines += [f"- `{md(r.run_id)}`: {md(platform_of(r.manifest)[0])}, scenario {md(r.scenario_name)}, "
              f"**{md(r.status)}**{' (baseline)' if r.run_id == c.baseline_id else ''}" for r in c.runs]
    lines += [""] + [f"> ⚠️ {md(n)}" for n in notes]
    lines += ["", "| metric | better | " + " | ".join(md(i) for i in ids) + " | best |",
              "|---|---|" + "---|" * len(ids) + "---|"]
    for m in c.metrics:
        cells = []
        for s in m.per_run:
            sig = ", significant" if s.significant else ""
            cells.append(f"{fmt(s.p50, m.unit)} (x{s.ratio_to_best:.2f}{sig})")
        lines.append(f"| {md(m.metric)} | {m.direction} | " + " | ".join(md(x) for x in cells)
                     + f" | {md(m.best_run)} |")
    lines += ["", "p50 (x ratio to best; significant = one-sided Mann-Whitney p < 0.05)."]
    if c.not_shared:
        listed = ", ".join(f"{md(m)} ({md(', '.join(r))})" for m, r in c.not_shared)
        lines += ["", f"Not in every run: {listed}"]
    return "\n".join(lines) + "\n"


def _csv(c: Comparison, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "unit", "better", "run_id", "platform", "scenario", "status", "count",
                         "p50", "p95", "ratio_to_best", "best", "p_value", "significant"])
        info = {r.run_id: r for r in c.runs}
        for m in c.metrics:
            for s in m.per_run:
                run = info[s.run_id]
                writer.writerow([m.metric, m.unit, m.direction, s.run_id, platform_of(run.manifest)[0],
                                 run.scenario_name, run.status, s.count, s.p50, s.p95, s.ratio_to_best,
                                 s.run_id == m.best_run, "" if s.p_value is None else s.p_value,
                                 "" if s.significant is None else s.significant])
        for metric, runs in c.not_shared:
            for run_id in runs:
                run = info[run_id]
                writer.writerow([metric, "", "", run_id, platform_of(run.manifest)[0], run.scenario_name,
                                 run.status, "", "", "", "", "", "", "not in every run"])


def render_comparison(run_dirs: Sequence[Path], out_dir: Path, baseline: Path | None = None) -> Path:
    """Write comparison.html/.md/.csv into ``out_dir``; return the HTML path.

    Raises ``virtproof.reports.results.NotARunDirectory`` if a directory is not a run.
    """
    dirs = [Path(d) for d in run_dirs]
    if baseline is not None and Path(baseline).resolve() not in {d.resolve() for d in dirs}:
        dirs = [Path(baseline), *dirs]
    loaded = load(dirs)
    baseline_id = None
    if baseline is not None:
        baseline_id = next(r.run_id for r in loaded.runs if r.path.resolve() == Path(baseline).resolve())
    comparison = compare_loaded(loaded, baseline_id)
    notes = _notes(comparison)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = render_comparison_html({
        "c": comparison, "notes": notes, "run_rows": _run_rows(comparison),
        "parity_rows": _parity_rows(comparison), "charts": _charts(comparison, loaded),
        "run_ids": [r.run_id for r in comparison.runs],
    })
    html_path = out_dir / "comparison.html"
    html_path.write_text(html, encoding="utf-8")
    (out_dir / "comparison.md").write_text(_markdown(comparison, notes), encoding="utf-8")
    _csv(comparison, out_dir / "comparison.csv")
    return html_path


def stats_frame(c: Comparison) -> pd.DataFrame:
    """The comparison as a tidy DataFrame (one row per metric and run)."""
    return pd.DataFrame([
        {"metric": m.metric, "run_id": s.run_id, "p50": s.p50, "p95": s.p95, "count": s.count,
         "ratio_to_best": s.ratio_to_best, "best": s.run_id == m.best_run, "p_value": s.p_value}
        for m in c.metrics for s in m.per_run
    ])
