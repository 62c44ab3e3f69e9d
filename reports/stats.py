"""Per-metric and per-label-set statistics, vectorised with pandas groupby.

Input is a samples DataFrame as made by ``virtproof.reports.results.load_runs`` or
``virtproof.reports.frame.load`` (``run_id``, ``metric``, ``value``, ``unit``, ``label.<key>``).

Each (run, metric) gets one aggregate row (``labels`` empty) over all its samples. When a
metric has more than one *label set* it also gets a row per label set. Label sets are built
from dimension labels only: identity labels that name one VM or one attempt (see
``IDENTITY_LABELS``) would make every set a single sample, so they are left out.

Quantiles use linear interpolation (numpy's default), so p95 here equals
``numpy.percentile(values, 95)``. Besides ``count mean p50 p95 p99 min max`` each row carries
kube-burner's quantile names ``P50 P95 P99 Max Avg``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from virtproof.reports.direction import better
from virtproof.reports.frame import LABEL_PREFIX

StatName = Literal["count", "mean", "p50", "p95", "p99", "min", "max"]
STATS: tuple[StatName, ...] = ("count", "mean", "p50", "p95", "p99", "min", "max")
KUBE_BURNER = {"P50": "p50", "P95": "p95", "P99": "p99", "Max": "max", "Avg": "mean"}
IDENTITY_LABELS = frozenset(
    {"vm", "vm_name", "vmi", "name", "pod", "uid", "iteration", "attempt", "sample", "nodeid", "test"}
)
STAT_COLUMNS = ["run_id", "metric", "unit", "labels", *STATS, *KUBE_BURNER]
_QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}

FloatArray = npt.NDArray[np.float64]


def label_columns(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df.columns if c.startswith(LABEL_PREFIX))


def dimension_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in label_columns(df) if c[len(LABEL_PREFIX):] not in IDENTITY_LABELS]


def _summarise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = df.groupby(keys, observed=True, dropna=False, sort=True)
    values = grouped["value"]
    out = values.agg(["count", "mean", "min", "max"])
    quantiles = values.quantile(np.array(list(_QUANTILES.values()))).unstack()
    quantiles.columns = list(_QUANTILES)
    out = out.join(quantiles)
    out["unit"] = grouped["unit"].first().astype("object")
    return out.reset_index()


def _label_text(row: Mapping[Any, object], columns: list[str]) -> str:
    parts = []
    for column in columns:
        value = row.get(column)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        parts.append(f"{column[len(LABEL_PREFIX):]}={value}")
    return ",".join(parts)


def compute_stats(df: pd.DataFrame, per_label_set: bool = True) -> pd.DataFrame:
    """A row per (run, metric) and per (run, metric, label set); see the module docstring."""
    if df.empty:
        return pd.DataFrame(columns=STAT_COLUMNS)
    keys = ["run_id", "metric"]
    aggregate = _summarise(df, keys)
    aggregate["labels"] = ""
    parts = [aggregate]
    dims = dimension_columns(df)
    if per_label_set and dims:
        by_set = _summarise(df, keys + dims)
        sets_per_metric = by_set.groupby(keys, observed=True)["count"].transform("size")
        by_set = by_set[sets_per_metric > 1]
        if not by_set.empty:
            # One string per group (not per sample): few rows.
            by_set = by_set.assign(
                labels=[_label_text(r, dims) for r in by_set[dims].astype("object").to_dict("records")]
            ).drop(columns=dims)
            parts.append(by_set)
    out = pd.concat(parts, ignore_index=True)
    out["run_id"] = out["run_id"].astype("object")
    out["metric"] = out["metric"].astype("object")
    out["count"] = out["count"].astype("int64")
    for alias, stat in KUBE_BURNER.items():
        out[alias] = out[stat]
    out = out.sort_values(["run_id", "metric", "labels"], kind="stable", ignore_index=True)
    return out[STAT_COLUMNS]


def worst_samples(df: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """Per metric, the ``n`` samples furthest in the bad direction, with all their labels
    (identity labels included: these rows say *which* VM was slowest)."""
    if df.empty:
        return pd.DataFrame(columns=["metric", "value", "unit", "labels"])
    ordered = df.sort_values("value", kind="stable")
    low = ordered.groupby("metric", observed=True).head(n)
    high = ordered.groupby("metric", observed=True).tail(n).iloc[::-1]
    labels = label_columns(df)
    rows = []
    for frame, direction in ((high, "lower"), (low, "higher")):
        for record in frame[["metric", "value", "unit", *labels]].astype("object").to_dict("records"):
            if better(str(record["metric"]), str(record["unit"])) == direction:
                rows.append({"metric": record["metric"], "value": record["value"], "unit": record["unit"],
                             "labels": _label_text(record, labels)})
    return pd.DataFrame(rows, columns=["metric", "value", "unit", "labels"])


def select(df: pd.DataFrame, metric: str, labels: Mapping[str, str] | None = None,
           run_id: str | None = None) -> FloatArray:
    """The values of one metric (optionally one run, optionally matching a labels filter)."""
    mask = df["metric"] == metric
    if run_id is not None:
        mask &= df["run_id"] == run_id
    for key, wanted in (labels or {}).items():
        column = f"{LABEL_PREFIX}{key}"
        if column not in df.columns:
            return np.empty(0, dtype=np.float64)
        mask &= df[column].astype("object") == wanted
    return df.loc[mask, "value"].to_numpy(dtype=np.float64)


def stat_of(values: FloatArray, stat: str) -> float:
    """One statistic of an array, with the same definitions as ``compute_stats``."""
    if stat == "count":
        return float(values.size)
    if values.size == 0:
        return float("nan")
    if stat in _QUANTILES:
        return float(np.percentile(values, _QUANTILES[stat] * 100))
    if stat == "mean":
        return float(values.mean())
    if stat == "min":
        return float(values.min())
    if stat == "max":
        return float(values.max())
    raise ValueError(f"unknown stat {stat!r}")


def unit_of(df: pd.DataFrame, metric: str) -> str:
    units = df.loc[df["metric"] == metric, "unit"]
    return str(units.iloc[0]) if len(units) else ""


def values_by_run_metric(df: pd.DataFrame) -> dict[tuple[str, str], FloatArray]:
    """All values grouped by (run_id, metric), without a Python loop over samples."""
    if df.empty:
        return {}
    grouped = df.groupby(["run_id", "metric"], observed=True, sort=False)
    values = df["value"].to_numpy(dtype=np.float64)
    out: dict[tuple[str, str], FloatArray] = {}
    for key, idx in grouped.indices.items():
        run_id, metric = key if isinstance(key, tuple) else (key, "")
        out[(str(run_id), str(metric))] = values[idx]
    return out
