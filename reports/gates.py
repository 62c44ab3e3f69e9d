"""Gates: the scenario's SLOs (absolute or ratio) and regression against a baseline run.

- Absolute: ``stat(metric[labels])`` against ``max``/``min``.
- Ratio: ``stat(metric[labels]) / stat(ratio_to[labels])`` against ``max``/``min``.
- An SLO whose metric (or ratio_to metric) has no samples FAILS with reason "no samples".
- Regression: for every metric a run shares with the baseline, compare medians in the
  metric's bad direction (``virtproof.reports.direction``). It fails only when the median got worse by
  more than ``max_regression`` AND a one-sided Mann-Whitney U test says the shift is
  significant (p < ``alpha``). Samples above ``MAX_TEST_SAMPLES`` per side are subsampled
  (seeded) for the test; the medians always use every sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from virtproof.reports.direction import better
from virtproof.reports.stats import FloatArray, select, stat_of, unit_of, values_by_run_metric
from virtproof.scenarios.model import SLO

GateKind = Literal["absolute", "ratio", "regression"]
ALPHA = 0.05
MAX_TEST_SAMPLES = 20_000


@dataclass(frozen=True)
class GateResult:
    name: str
    kind: GateKind
    metric: str
    stat: str
    passed: bool
    observed: float | None
    bound: str
    reason: str
    unit: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    p_value: float | None = None
    baseline: float | None = None
    subject: str = ""  # "p95(boot.time_to_ssh_s)": what the gate measures, without its bound

    def line(self) -> str:
        """One line that says what was observed: ``ok   p95(x) = 8.7 s <= 60 s``, or why it failed."""
        verdict = "ok  " if self.passed else "FAIL"
        if self.kind == "regression" or not self.subject:
            return f"{verdict} {self.name}: {self.reason}"
        seen = f"{self.subject} = {fmt(self.observed, self.unit)} {self.bound}"
        return f"{verdict} {seen}" if self.passed else f"{verdict} {seen}: {self.reason}"


def parse_percent(text: str) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1. Raises ValueError with a one-line message."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not match:
        raise ValueError(f"max regression {text!r}: expected a percentage (10%) or a fraction (0.1)")
    number = float(match.group(1))
    fraction = number / 100 if match.group(2) else number
    if not match.group(2) and number > 1:
        raise ValueError(f"max regression {text!r}: a bare number is a fraction; write {number:g}%")
    return fraction


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} {unit}".strip()


def _subject(slo: SLO) -> str:
    subject = f"{slo.stat}({slo.metric})"
    if slo.ratio_to:
        subject = f"{subject} / {slo.stat}({slo.ratio_to})"
    if slo.labels:
        subject += " {" + ",".join(f"{k}={v}" for k, v in sorted(slo.labels.items())) + "}"
    return subject


def _slo_name(slo: SLO) -> str:
    subject = _subject(slo)
    bounds = []
    if slo.min is not None:
        bounds.append(f">= {slo.min:g}")
    if slo.max is not None:
        bounds.append(f"<= {slo.max:g}")
    return f"{subject} {' and '.join(bounds)}"


def _bound_text(slo: SLO, unit: str) -> str:
    parts = []
    if slo.min is not None:
        parts.append(f">= {fmt(slo.min, unit)}")
    if slo.max is not None:
        parts.append(f"<= {fmt(slo.max, unit)}")
    return " and ".join(parts)


def _miss(observed: float, slo: SLO, unit: str) -> str:
    if slo.max is not None and observed > slo.max:
        over = observed - slo.max
        pct = f" ({over / abs(slo.max) * 100:.1f}%)" if slo.max else ""
        return f"{fmt(observed, unit)} is above max {fmt(slo.max, unit)} by {fmt(over, unit)}{pct}"
    if slo.min is not None and observed < slo.min:
        under = slo.min - observed
        pct = f" ({under / abs(slo.min) * 100:.1f}%)" if slo.min else ""
        return f"{fmt(observed, unit)} is below min {fmt(slo.min, unit)} by {fmt(under, unit)}{pct}"
    return ""


def evaluate_slo(df: pd.DataFrame, slo: SLO) -> GateResult:
    kind: GateKind = "ratio" if slo.ratio_to else "absolute"
    labels = tuple(sorted(slo.labels.items()))
    values = select(df, slo.metric, slo.labels)
    unit = "" if slo.ratio_to else unit_of(df, slo.metric)

    def result(passed: bool, observed: float | None, reason: str) -> GateResult:
        return GateResult(_slo_name(slo), kind, slo.metric, slo.stat, passed, observed,
                          _bound_text(slo, unit), reason, unit, labels, subject=_subject(slo))

    if values.size == 0:
        return result(False, None, "no samples")
    observed = stat_of(values, slo.stat)
    if slo.ratio_to:
        denominator_values = select(df, slo.ratio_to, slo.labels)
        if denominator_values.size == 0:
            return result(False, None, f"no samples of {slo.ratio_to}")
        denominator = stat_of(denominator_values, slo.stat)
        if denominator == 0:
            return result(False, None, f"{slo.stat}({slo.ratio_to}) is 0: ratio undefined")
        observed = observed / denominator
    miss = _miss(observed, slo, unit)
    return result(not miss, observed, miss)


def evaluate_slos(df: pd.DataFrame, slos: Sequence[SLO]) -> list[GateResult]:
    return [evaluate_slo(df, slo) for slo in slos]


def _test_sample(values: FloatArray, rng: np.random.Generator) -> FloatArray:
    if values.size <= MAX_TEST_SAMPLES:
        return values
    return rng.choice(values, MAX_TEST_SAMPLES, replace=False)


def significance(worse: FloatArray, reference: FloatArray, direction: str) -> float:
    """One-sided Mann-Whitney U p-value that ``worse`` is worse than ``reference``."""
    if worse.size == 0 or reference.size == 0:
        return float("nan")
    rng = np.random.default_rng(0)
    alternative = "greater" if direction == "lower" else "less"
    a, b = _test_sample(worse, rng), _test_sample(reference, rng)
    if np.all(a == a[0]) and np.all(b == a[0]):
        return 1.0
    p = float(mannwhitneyu(a, b, alternative=alternative).pvalue)
    return p if not math.isnan(p) else 1.0


def relative_change(current: float, baseline: float, direction: str) -> float:
    """How much worse ``current`` is than ``baseline`` (0.1 = 10% worse; negative = better)."""
    delta = current - baseline if direction == "lower" else baseline - current
    if baseline == 0:
        return 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return delta / abs(baseline)


def evaluate_regression(
    current: pd.DataFrame, baseline: pd.DataFrame, max_regression: float, alpha: float = ALPHA
) -> list[GateResult]:
    """One gate per metric the two runs share; see the module docstring."""
    now = {m: v for (_, m), v in values_by_run_metric(current).items()}
    before = {m: v for (_, m), v in values_by_run_metric(baseline).items()}
    results: list[GateResult] = []
    for metric in sorted(set(now) & set(before)):
        unit = unit_of(current, metric)
        direction = better(metric, unit)
        cur, base = now[metric], before[metric]
        m_cur, m_base = float(np.median(cur)), float(np.median(base))
        change = relative_change(m_cur, m_base, direction)
        p = significance(cur, base, direction)
        significant = p < alpha
        too_much = change > max_regression
        passed = not (too_much and significant)
        word = "worse" if change > 0 else "better"
        summary = (f"median {fmt(m_base, unit)} -> {fmt(m_cur, unit)} "
                   f"({abs(change) * 100:.1f}% {word}, {direction} is better), Mann-Whitney p={p:.3g}")
        if not passed:
            reason = f"significant regression beyond {max_regression * 100:g}%: {summary}"
        elif too_much:
            reason = f"not significant (n={cur.size} vs {base.size}), not counted: {summary}"
        else:
            reason = summary
        results.append(GateResult(
            name=f"regression p50({metric}) <= +{max_regression * 100:g}% vs baseline",
            kind="regression", metric=metric, stat="p50", passed=passed, observed=m_cur,
            bound=f"<= {max_regression * 100:g}% worse than {fmt(m_base, unit)}", reason=reason,
            unit=unit, p_value=p, baseline=m_base,
        ))
    return results
