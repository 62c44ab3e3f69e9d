"""summary.md: a short Markdown summary for a CI comment (HTML in cells is escaped)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from virtproof.reports.frame import RunInfo
from virtproof.reports.gates import GateResult, fmt
from virtproof.reports.parity import ParityMatrix

MAX_METRICS = 25


def md(text: object) -> str:
    """Escape a value for a Markdown table cell (pipes, newlines and HTML)."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    )


def gate_table(gates: Sequence[GateResult]) -> list[str]:
    lines = ["| gate | observed | bound | result | why |", "|---|---|---|---|---|"]
    for g in gates:
        mark = "✅ pass" if g.passed else "❌ FAIL"
        lines.append(f"| {md(g.name)} | {md(fmt(g.observed, g.unit))} | {md(g.bound)} | {mark} "
                     f"| {md(g.reason or 'within bounds')} |")
    return lines


def render_summary(run: RunInfo, platform: str, stats: pd.DataFrame, gates: Sequence[GateResult],
                   matrix: ParityMatrix, notes: Sequence[str]) -> str:
    failed = [g for g in gates if not g.passed]
    verdict = (f"❌ {len(failed)} of {len(gates)} gate(s) failed" if failed
               else f"✅ {len(gates)} gate(s) passed")
    lines = [
        f"## virtproof: {md(run.scenario_name)} on {md(platform)}: {verdict}",
        "",
        f"Run `{md(run.run_id)}` · status **{md(run.status)}** · {run.samples} samples",
    ]
    lines += [f"> ⚠️ {md(n)}" for n in notes]
    if gates:
        lines += ["", "### Gates", "", *gate_table(gates)]
    aggregate = stats[stats["labels"] == ""]
    if not aggregate.empty:
        lines += ["", "### Metrics", "", "| metric | unit | n | p50 | p95 | max |",
                  "|---|---|---|---|---|---|"]
        for r in aggregate.head(MAX_METRICS).to_dict("records"):
            lines.append(f"| {md(r['metric'])} | {md(r['unit'])} | {r['count']} | {fmt(r['p50'])} "
                         f"| {fmt(r['p95'])} | {fmt(r['max'])} |")
        if len(aggregate) > MAX_METRICS:
            lines.append(f"\n…and {len(aggregate) - MAX_METRICS} more metrics in stats.csv.")
    if matrix.cells:
        states: dict[str, list[str]] = {}
        for cell in matrix.cells:
            states.setdefault(cell.state, []).append(cell.capability)
        lines += ["", "### Feature parity", ""]
        lines += [f"- **{state}**: {md(', '.join(caps))}" for state, caps in sorted(states.items())]
    return "\n".join(lines) + "\n"
