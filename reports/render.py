"""HTML rendering (jinja2, autoescape on) for a run's report.html and the comparison page.

Everything is inline (CSS, charts as data: PNGs) and the page carries a Content-Security-Policy
that forbids scripts and any fetch, so a report opens offline and a string from the results
(a VM name, a skip reason) can only ever appear as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jinja2
import pandas as pd

from virtproof.core import density_metrics
from virtproof.reports.charts import Chart
from virtproof.reports.frame import LABEL_PREFIX, RunInfo
from virtproof.reports.gates import GateResult
from virtproof.reports.parity import ParityMatrix

MAX_HTML_STAT_ROWS = 400
KEY_METRICS = (
    "boot.time_to_ssh_s",
    "boot.time_to_running_s",
    "boot.time_to_command_s",
    "migration.total_s",
    "migration.downtime_ms",
    "migration.guest_downtime_ms",
    density_metrics.CAPACITY_VMS,
    density_metrics.VM_OVERHEAD_MIB,
)


def _num(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("virtproof.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["num"] = _num
    env.filters["tojson_pretty"] = _pretty
    return env


def _renderer_version() -> str:
    """The installed virtproof's version (from its distribution metadata: no import of the front door)."""
    try:
        return version("virtproof")
    except PackageNotFoundError:
        return "unknown"


def _common() -> dict[str, Any]:
    return {"version": _renderer_version(), "generated": datetime.now(UTC).isoformat(timespec="seconds")}


def key_numbers(stats: pd.DataFrame) -> list[dict[str, Any]]:
    """Aggregate rows of the key metrics first, then any others, at most 8 cards."""
    rows = stats[stats["labels"] == ""]
    if rows.empty:
        return []
    order = {m: i for i, m in enumerate(KEY_METRICS)}
    records: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in rows.to_dict("records")]
    records.sort(key=lambda r: (order.get(str(r["metric"]), len(order)), str(r["metric"])))
    return records[:8]


def manifest_parts(manifest: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    sections = []
    summary = {}
    for key in sorted(manifest):
        value = manifest[key]
        if isinstance(value, Mapping) and value:
            sections.append((key, dict(value)))
        else:
            summary[key] = value
    return summary, sections


INTEGRITY_COLUMNS = ("vm", "source", "target", "leg", "mode", "dirty_mibps", "cause")


def integrity_rows(frame: pd.DataFrame) -> dict[str, Any]:
    """The guest-integrity section: every move that found corrupted pages or kernel trouble (with
    the first bad addresses and the cause), and how many verified moves found nothing."""
    found: list[dict[str, Any]] = []
    verified = frame[frame["metric"] == "migration.corrupted_pages"]
    for metric, what, detail in (("migration.corrupted_pages", "corrupted pages", "first_bad"),
                                 ("migration.guest_kernel_errors", "kernel trouble", "first")):  # fmt: skip
        rows = frame[(frame["metric"] == metric) & (frame["value"] > 0)]
        for record in rows.to_dict("records"):
            labels = {c: record.get(f"{LABEL_PREFIX}{c}") for c in (*INTEGRITY_COLUMNS, detail)}
            labels = {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
                      for k, v in labels.items()}  # fmt: skip
            found.append({"what": what, "count": record["value"], "detail": labels.pop(detail), **labels})
    per_gib = frame.loc[frame["metric"] == "migration.verify_s_per_gib", "value"]
    return {
        "found": found,
        "verified": len(verified),
        "clean": int((verified["value"] == 0).sum()),
        "verify_s_per_gib_p50": float(per_gib.median()) if len(per_gib) else None,
        "verify_s_per_gib_max": float(per_gib.max()) if len(per_gib) else None,
    }


def render_run(
    run: RunInfo,
    stats: pd.DataFrame,
    gates: Sequence[GateResult],
    charts: Sequence[Chart],
    matrix: ParityMatrix,
    notes: Sequence[str],
    worst: pd.DataFrame | None = None,
    integrity: Mapping[str, Any] | None = None,
) -> str:
    summary, sections = manifest_parts(run.manifest)
    stat_rows = stats.to_dict("records")
    problems = [o for o in matrix.outcomes if o.outcome != "passed"]
    return environment().get_template("report.html.j2").render(
        run=run,
        platform=matrix.platform,
        gates=gates,
        gates_passed=all(g.passed for g in gates),
        charts=charts,
        matrix=matrix,
        suites=matrix.suite_counts(),
        problems=problems,
        stats=stat_rows[:MAX_HTML_STAT_ROWS],
        stats_total=len(stat_rows),
        stats_truncated=len(stat_rows) > MAX_HTML_STAT_ROWS,
        key_numbers=key_numbers(stats),
        notes=notes,
        worst=[] if worst is None else worst.to_dict("records"),
        integrity=integrity or {"found": [], "verified": 0},
        manifest_summary=summary,
        manifest_sections=sections,
        **_common(),
    )


def render_comparison_html(context: Mapping[str, Any]) -> str:
    return environment().get_template("comparison.html.j2").render(**context, **_common())
