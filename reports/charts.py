"""Charts for the reports: matplotlib (Agg, no pyplot state), PNG, base64 for inline <img>.

Each function returns ``None`` when its metrics have no samples, so the report only draws
what the run measured. Large series are reduced to at most ``CDF_POINTS`` quantiles before
plotting (the curve is the same; the PNG and the time to draw it are not).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from virtproof.core import density_metrics
from virtproof.reports.direction import better
from virtproof.reports.frame import LABEL_PREFIX
from virtproof.reports.stats import FloatArray, dimension_columns, select

CDF_POINTS = 1000
BOOT_PHASES = ("boot.time_to_running_s", "boot.time_to_ssh_s", "boot.time_to_command_s")


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    alt: str
    png_base64: str


def _png(fig: Figure, key: str, title: str, alt: str) -> Chart:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    return Chart(key, title, alt, base64.b64encode(buf.getvalue()).decode("ascii"))


def _ecdf(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    if values.size > CDF_POINTS:
        probs = np.linspace(0.0, 1.0, CDF_POINTS)
        return np.quantile(values, probs), probs
    xs = np.sort(values)
    return xs, np.arange(1, xs.size + 1) / xs.size


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _groups(df: pd.DataFrame, metric: str) -> list[tuple[str, FloatArray]]:
    """A metric's values per dimension-label set (few groups; no loop over samples)."""
    rows = df[df["metric"] == metric]
    if rows.empty:
        return []
    dims = [c for c in dimension_columns(rows) if rows[c].notna().any()]
    values = rows["value"].to_numpy(dtype=np.float64)
    if not dims:
        return [("all", values)]
    grouped = rows.groupby(dims, observed=True, dropna=False, sort=True)
    out = []
    for key, idx in grouped.indices.items():
        parts = key if isinstance(key, tuple) else (key,)
        name = ",".join(f"{d[len(LABEL_PREFIX):]}={v}" for d, v in zip(dims, parts, strict=True)
                        if not (isinstance(v, float) and np.isnan(v)))
        out.append((name or "all", values[idx]))
    return out


def boot_cdf(df: pd.DataFrame) -> Chart | None:
    series = [(m, select(df, m)) for m in BOOT_PHASES]
    series = [(m, v) for m, v in series if v.size]
    if not series:
        return None
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for metric, values in series:
        xs, ys = _ecdf(values)
        ax.step(xs, ys, where="post", label=f"{metric.split('.')[-1]} (n={values.size})")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("fraction of VMs")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Time to SSH: cumulative distribution")
    return _png(fig, "boot_cdf", "Time to SSH (CDF)", "CDF of boot times to running, SSH and command")


def boot_phases(df: pd.DataFrame) -> Chart | None:
    present = [(m, select(df, m)) for m in BOOT_PHASES]
    present = [(m, v) for m, v in present if v.size]
    if not present:
        return None
    fig = Figure(figsize=(7, 2.8))
    ax = fig.add_subplot()
    for row, (stat, q) in enumerate((("p50", 50.0), ("p95", 95.0))):
        start = 0.0
        for metric, values in present:
            end = float(np.percentile(values, q))
            width = max(end - start, 0.0)
            ax.barh(row, width, left=start, label=metric.split(".")[-1] if row == 0 else None,
                    color=f"C{BOOT_PHASES.index(metric)}")
            ax.text(start + width / 2, row, f"{width:.2f}", ha="center", va="center", fontsize=8)
            start = max(end, start)
        del stat
    ax.set_yticks([0, 1], ["p50", "p95"])
    ax.set_xlabel("seconds (each phase from the end of the previous one)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Boot phase breakdown")
    return _png(fig, "boot_phases", "Boot phase breakdown", "Stacked bars of boot phases at p50 and p95")


def _bars(ax: Axes, groups: Sequence[tuple[str, FloatArray]], offset: float, width: float,
          label: str, color: str) -> None:
    xs = np.arange(len(groups)) + offset
    p50 = [float(np.percentile(v, 50)) for _, v in groups]
    p95 = [float(np.percentile(v, 95)) for _, v in groups]
    ax.bar(xs, p50, width, label=f"{label} p50", color=color)
    ax.scatter(xs, p95, marker="_", s=200, color="black", zorder=3, label=f"{label} p95")


def migration(df: pd.DataFrame) -> Chart | None:
    total = _groups(df, "migration.total_s")
    platform = _groups(df, "migration.downtime_ms")
    guest = _groups(df, "migration.guest_downtime_ms")
    if not (total or platform or guest):
        return None
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    if total:
        _bars(ax1, total, 0.0, 0.6, "total", "C0")
        ax1.set_xticks(range(len(total)), [_short(n) for n, _ in total], rotation=20, fontsize=7)
        ax1.set_ylabel("seconds")
        ax1.legend(fontsize=7)
    ax1.set_title("Migration total time")
    names = sorted({n for n, _ in platform} | {n for n, _ in guest})
    if names:
        pmap, gmap = dict(platform), dict(guest)
        empty = np.array([np.nan])
        _bars(ax2, [(n, pmap.get(n, empty)) for n in names], -0.2, 0.4, "platform-reported", "C1")
        _bars(ax2, [(n, gmap.get(n, empty)) for n in names], 0.2, 0.4, "guest-observed", "C2")
        ax2.set_xticks(range(len(names)), [_short(n) for n in names], rotation=20, fontsize=7)
        ax2.set_ylabel("milliseconds")
        ax2.legend(fontsize=7)
    ax2.set_title("Downtime: platform vs guest")
    return _png(fig, "migration", "Migration", "Migration total time and downtime, platform vs guest")


MODE_STYLE = {"precopy": ("C0", "o"), "auto_converge": ("C1", "s"), "postcopy": ("C2", "^")}


def _by_rate(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's samples as (mode, rate, value) rows, ``rate`` from the ``dirty_mibps`` label."""
    rows = df[df["metric"] == metric]
    mode_col, rate_col = f"{LABEL_PREFIX}mode", f"{LABEL_PREFIX}dirty_mibps"
    if rows.empty or mode_col not in rows.columns or rate_col not in rows.columns:
        return pd.DataFrame(columns=["mode", "rate", "value"])
    frame = pd.DataFrame({
        "mode": rows[mode_col].astype("object").to_numpy(),
        "rate": pd.to_numeric(rows[rate_col].astype("object"), errors="coerce").to_numpy(),
        "value": rows["value"].to_numpy(dtype=np.float64),
    })  # fmt: skip
    return frame.dropna(subset=["rate"])


def _first_label(df: pd.DataFrame, metric: str, key: str) -> str | None:
    rows = df[df["metric"] == metric]
    column = f"{LABEL_PREFIX}{key}"
    if rows.empty or column not in rows.columns:
        return None
    values = rows[column].dropna()
    return str(values.iloc[0]) if len(values) else None


def convergence(df: pd.DataFrame) -> Chart | None:
    """The convergence map: per mode and dirty rate, converged or not, total time, downtime and
    data sent, with the predicted and the measured pre-copy boundary (``convergence.*`` samples)."""
    converged = _by_rate(df, "convergence.converged")
    if converged.empty:
        return None
    modes = [m for m in MODE_STYLE if m in set(converged["mode"])] + sorted(set(converged["mode"]) - set(MODE_STYLE))
    bandwidth = _first_label(df, "convergence.converged", "bandwidth_mibps")
    downtime = _first_label(df, "convergence.converged", "downtime_limit_ms")
    predicted = select(df, "convergence.predicted_boundary_mibps")
    available = select(df, "convergence.available_bandwidth_mibps")
    fig = Figure(figsize=(10, 7.2))
    (ax_map, ax_total), (ax_down, ax_sent) = fig.subplots(2, 2)

    def boundaries(ax: Axes, legend: bool) -> None:
        if bandwidth is not None:
            ax.axvline(float(bandwidth), color="grey", linestyle=":", linewidth=1.5,
                       label=f"bandwidth cap {bandwidth} MiB/s" if legend else None)
        if available.size and bandwidth is not None and float(available[0]) < float(bandwidth) * 0.98:
            ax.axvline(float(available[0]), color="grey", linestyle="--", linewidth=1,
                       label=f"bandwidth available {available[0]:.1f} MiB/s" if legend else None)
        if predicted.size:
            ax.axvline(float(predicted[0]), color="C3", linestyle="--", linewidth=2,
                       label=f"predicted pre-copy boundary {predicted[0]:.1f} MiB/s" if legend else None)
        measured = df[(df["metric"] == "convergence.measured_boundary_mibps")]
        mode_col = f"{LABEL_PREFIX}mode"
        if not measured.empty and mode_col in measured.columns:
            pre = measured[measured[mode_col].astype("object") == "precopy"]
            if not pre.empty:
                row = pre.iloc[0]
                failed = float(row["value"])
                last = str(row.get(f"{LABEL_PREFIX}last_converged", "none"))
                bound = str(row.get(f"{LABEL_PREFIX}bound", ""))
                if bound == "at_or_below":
                    low = float(last) if last not in ("none", "nan") else 0.0
                    ax.axvspan(low, failed, color="C3", alpha=0.15,
                               label=f"measured pre-copy boundary: {low:g}-{failed:g} MiB/s" if legend else None)

    # (a) the map itself: one row per mode, a mark per rate
    for row, mode in enumerate(modes):
        points = converged[converged["mode"] == mode]
        ok, bad = points[points["value"] >= 0.5], points[points["value"] < 0.5]
        ax_map.scatter(ok["rate"], [row] * len(ok), marker="o", s=90, color="C2", zorder=3,
                       label="converged" if row == 0 else None)
        ax_map.scatter(bad["rate"], [row] * len(bad), marker="X", s=110, color="C3", zorder=3,
                       label="did not converge (cancelled at the timeout)" if row == 0 else None)
    ax_map.legend(fontsize=7, loc="upper left", ncol=2)
    boundaries(ax_map, legend=False)
    ax_map.set_yticks(range(len(modes)), modes)
    ax_map.set_ylim(-0.6, len(modes) + 0.2)  # room above the rows for the legend
    ax_map.set_xlabel("guest dirty rate asked for (MiB/s)")
    title = "Convergence map"
    if bandwidth is not None:
        title += f" (cap {bandwidth} MiB/s" + (f", downtime limit {downtime} ms)" if downtime else ")")
    ax_map.set_title(title, fontsize=10)
    ax_map.grid(alpha=0.3, axis="x")

    def per_mode(ax: Axes, metric: str, ylabel: str, linestyle: str = "-", suffix: str = "") -> None:
        frame = _by_rate(df, metric)
        for mode in modes:
            color, marker = MODE_STYLE.get(mode, ("C4", "o"))
            series = frame[frame["mode"] == mode].groupby("rate")["value"].median()
            if not series.empty:
                ax.plot(series.index, series.to_numpy(), marker=marker, linestyle=linestyle, color=color,
                        label=f"{mode}{suffix}")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("guest dirty rate asked for (MiB/s)")
        ax.grid(alpha=0.3)

    per_mode(ax_total, "convergence.total_s", "seconds")
    model = _by_rate(df, "convergence.predicted_total_s")
    if not model.empty:
        series = model.groupby("rate")["value"].median()
        ax_total.plot(series.index, series.to_numpy(), color="C3", linestyle="--", label="pre-copy, predicted")
    boundaries(ax_total, legend=True)
    ax_total.set_title("Total time (a cancelled move: until the timeout)", fontsize=10)
    ax_total.legend(fontsize=6.5)
    per_mode(ax_down, "convergence.downtime_ms", "milliseconds", suffix=" (platform)")
    per_mode(ax_down, "convergence.guest_downtime_ms", "milliseconds", linestyle=":", suffix=" (guest-observed)")
    if not _by_rate(df, "convergence.downtime_ms").empty or not _by_rate(df, "convergence.guest_downtime_ms").empty:
        ax_down.set_yscale("log")
    boundaries(ax_down, legend=False)
    ax_down.set_title("Downtime: platform-reported and guest-observed", fontsize=10)
    ax_down.legend(fontsize=6.5)
    per_mode(ax_sent, "convergence.transferred_mib", "MiB")
    boundaries(ax_sent, legend=False)
    ax_sent.set_title("Data sent", fontsize=10)
    ax_sent.legend(fontsize=7)
    return _png(fig, "convergence", "Convergence map",
                "Per migration mode and guest dirty rate: converged or not, total time, downtime and data sent, "
                "with the predicted and measured pre-copy boundary")


def _by_running(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = df[df["metric"] == metric]
    for key in ("vms_running", "step"):
        column = f"{LABEL_PREFIX}{key}"
        if column in rows.columns and rows[column].notna().any():
            x = pd.to_numeric(rows[column].astype("object"), errors="coerce")
            frame = pd.DataFrame({"x": x.to_numpy(), "value": rows["value"].to_numpy()}).dropna()
            grouped = frame.groupby("x")["value"]
            return pd.DataFrame({"p50": grouped.quantile(0.5), "p95": grouped.quantile(0.95)})
    return pd.DataFrame(columns=["p50", "p95"])


def density(df: pd.DataFrame) -> Chart | None:
    ssh = _by_running(df, density_metrics.TIME_TO_SSH_S)
    overhead = _by_running(df, density_metrics.VM_OVERHEAD_MIB)
    capacity = select(df, density_metrics.CAPACITY_VMS)
    if ssh.empty and overhead.empty and capacity.size == 0:
        return None
    fig = Figure(figsize=(8, 3.8))
    ax = fig.add_subplot()
    if not ssh.empty:
        ax.plot(ssh.index, ssh["p50"], "o-", color="C0", label="time to SSH p50")
        ax.plot(ssh.index, ssh["p95"], "s--", color="C0", alpha=0.6, label="time to SSH p95")
    ax.set_xlabel("VMs running")
    ax.set_ylabel("seconds")
    handles, labels = ax.get_legend_handles_labels()
    if not overhead.empty:
        ax2 = ax.twinx()
        ax2.plot(overhead.index, overhead["p50"], "^-", color="C3", label="overhead per VM p50")
        ax2.set_ylabel("MiB per VM")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if capacity.size:
        cap = float(capacity.max())
        line = ax.axvline(cap, color="C2", linestyle=":", linewidth=2, label=f"capacity {cap:g} VMs")
        handles, labels = [*handles, line], [*labels, f"capacity {cap:g} VMs"]
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.set_title("Density: time to SSH and overhead against VMs running")
    return _png(fig, "density", "Density", "Density curve with capacity marked")


def v2v(df: pd.DataFrame) -> list[Chart]:
    metrics = sorted(str(m) for m in df["metric"].astype("object").unique() if str(m).startswith("v2v."))
    if not metrics:
        return []
    charts: list[Chart] = []
    verdict_col = f"{LABEL_PREFIX}verdict"
    rows = df[df["metric"].isin(metrics)]
    if verdict_col in rows.columns and rows[verdict_col].notna().any():
        counts = rows[verdict_col].astype("object").value_counts()
        fig = Figure(figsize=(6, 3))
        ax = fig.add_subplot()
        colors = {"ready": "C2", "needs fixes": "C1", "needs_fixes": "C1", "blocked": "C3"}
        ax.bar([str(i) for i in counts.index], counts.to_numpy(),
               color=[colors.get(str(i), "C0") for i in counts.index])
        ax.set_ylabel("samples")
        ax.set_title("V2V verdicts")
        charts.append(_png(fig, "v2v_verdicts", "V2V verdicts", "Count of V2V verdicts"))
    shown = metrics[:6]
    fig = Figure(figsize=(9, 2.6 * ((len(shown) + 1) // 2)))
    axes = fig.subplots((len(shown) + 1) // 2, 2, squeeze=False).ravel()
    for ax, metric in zip(axes, shown, strict=False):
        groups = _groups(df, metric)
        unit = str(rows.loc[rows["metric"] == metric, "unit"].iloc[0])
        _bars(ax, groups, 0.0, 0.6, better(metric, unit) + " is better", "C4")
        ax.set_xticks(range(len(groups)), [_short(n, 18) for n, _ in groups], rotation=20, fontsize=7)
        ax.set_title(f"{metric} ({unit})", fontsize=9)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    charts.append(_png(fig, "v2v_metrics", "V2V throughput and times", "V2V metrics per disk"))
    return charts


def run_charts(df: pd.DataFrame) -> list[Chart]:
    charts = [boot_cdf(df), boot_phases(df), migration(df), convergence(df), density(df)]
    out = [c for c in charts if c is not None]
    out.extend(v2v(df))
    return out


def comparison_cdf(per_run: Sequence[tuple[str, FloatArray]], metric: str) -> Chart | None:
    per_run = [(name, v) for name, v in per_run if v.size]
    if not per_run:
        return None
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for name, values in per_run:
        xs, ys = _ecdf(values)
        ax.step(xs, ys, where="post", label=f"{_short(name, 34)} (n={values.size})")
    ax.set_xlabel(metric)
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{metric}: cumulative distribution per run")
    return _png(fig, f"cdf_{metric}", f"{metric} per run", f"CDF of {metric} for each run")


def ratio_to_best(rows: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> Chart | None:
    """rows: (metric, [(run, ratio to best), ...]) -> grouped horizontal bars."""
    rows = [r for r in rows if r[1]][:12]
    if not rows:
        return None
    runs = sorted({run for _, ratios in rows for run, _ in ratios})
    fig = Figure(figsize=(8, 0.5 + 0.45 * len(rows) * max(1, len(runs)) / 2))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        ys = [j + i * height for j in range(len(rows))]
        xs = [dict(ratios).get(run, np.nan) for _, ratios in rows]
        ax.barh(ys, xs, height, label=_short(run, 30))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))], [_short(m, 34) for m, _ in rows],
                  fontsize=7)
    ax.set_xlabel("p50 relative to the best run (1.0 = best; higher = worse)")
    ax.legend(fontsize=7)
    ax.set_title("Each run against the best, per metric")
    return _png(fig, "ratio_to_best", "Ratio to best", "Bars of each run's p50 relative to the best run")
