"""Statistics against numpy, SLO gates (absolute, ratio), baseline regression, direction rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from virtproof.reports.direction import better
from virtproof.reports.finalize import finalize_run
from virtproof.reports.frame import load
from virtproof.reports.gates import evaluate_regression, evaluate_slo, parse_percent
from virtproof.reports.results import RunDirectory, SampleSink, load_runs
from virtproof.reports.stats import compute_stats
from virtproof.scenarios.model import SLO, parse_scenario


def _run(root: Path, run_id: str, series: dict[str, list[tuple[float, dict[str, str]]]]) -> RunDirectory:
    run = RunDirectory.create(root, run_id, {"scenario": {"name": "t"}})
    sink = SampleSink(run.path)
    for metric, values in series.items():
        unit = "MiB/s" if metric.endswith("throughput") else "s"
        for value, labels in values:
            sink.record(metric, value, unit, **labels)
    run.finish("passed")
    return run


def _frame(root: Path, run_id: str, series: dict[str, list[tuple[float, dict[str, str]]]]) -> pd.DataFrame:
    return load([_run(root, run_id, series).path]).frame


def test_stats_match_numpy_per_metric_and_label_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = {node: rng.lognormal(1.0, 0.6, size=n) for node, n in (("a", 101), ("b", 57), ("c", 3))}
    series = {"boot.time_to_ssh_s": [(float(v), {"node": node, "vm": f"vm{i}"})
                                      for node, vs in values.items() for i, v in enumerate(vs)],
              "other.single_s": [(4.0, {})]}
    run = _run(tmp_path, "r", series)
    fast = compute_stats(load([run.path]).frame)
    reference = compute_stats(load_runs([run.path]))  # the seam's loader gives the same stats
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), reference.reset_index(drop=True),
                                  check_dtype=False, check_categorical=False)

    def expect(row: pd.Series, data: np.ndarray) -> None:
        assert row["count"] == data.size
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
            assert row[name] == pytest.approx(np.percentile(data, q), rel=1e-12)
        assert row["mean"] == pytest.approx(data.mean(), rel=1e-12)
        assert row["min"] == data.min() and row["max"] == data.max()
        assert (row["P50"], row["P95"], row["P99"], row["Max"], row["Avg"]) == (
            row["p50"], row["p95"], row["p99"], row["max"], row["mean"])

    rows = fast[fast["metric"] == "boot.time_to_ssh_s"].set_index("labels")
    expect(rows.loc[""], np.concatenate(list(values.values())))
    for node, data in values.items():
        expect(rows.loc[f"node={node}"], data)
    single = fast[fast["metric"] == "other.single_s"]
    assert list(single["labels"]) == [""] and single.iloc[0]["p99"] == 4.0


def test_absolute_gates_with_label_filter(tmp_path: Path) -> None:
    df = _frame(tmp_path, "r", {"boot.time_to_ssh_s": [(float(v), {"node": "n0" if v < 6 else "n1"})
                                                      for v in range(1, 11)]})
    ok = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="max", max=10))
    assert ok.passed and ok.observed == 10 and ok.kind == "absolute"
    bad = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="p50", max=5))
    assert not bad.passed and bad.observed == 5.5
    assert bad.reason == "5.5 s is above max 5 s by 0.5 s (10.0%)"
    filtered = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="max", max=5, labels={"node": "n0"}))
    assert filtered.passed and filtered.observed == 5
    low = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="count", min=20))
    assert not low.passed and "below min" in low.reason
    for slo in (SLO(metric="nothing.here_s", max=1), SLO(metric="boot.time_to_ssh_s", max=1, labels={"node": "zz"}),
                SLO(metric="boot.time_to_ssh_s", max=1, labels={"nolabel": "x"})):
        missing = evaluate_slo(df, slo)
        assert not missing.passed and missing.reason == "no samples" and missing.observed is None


def test_ratio_gates(tmp_path: Path) -> None:
    df = _frame(tmp_path, "r", {
        "migration.downtime_ms": [(v, {}) for v in (10.0, 20.0, 30.0)],
        "migration.guest_downtime_ms": [(v, {}) for v in (15.0, 30.0, 45.0)],
    })
    ratio = SLO(metric="migration.guest_downtime_ms", stat="p50", ratio_to="migration.downtime_ms", max=2.0)
    result = evaluate_slo(df, ratio)
    assert result.passed and result.kind == "ratio" and result.observed == pytest.approx(1.5)
    tight = evaluate_slo(df, ratio.model_copy(update={"max": 1.2}))
    assert not tight.passed and "above max 1.2" in tight.reason
    floor = evaluate_slo(df, ratio.model_copy(update={"max": None, "min": 1.6}))
    assert not floor.passed and "below min" in floor.reason
    missing = evaluate_slo(df, ratio.model_copy(update={"ratio_to": "migration.absent_ms"}))
    assert not missing.passed and missing.reason == "no samples of migration.absent_ms"


def test_ratio_to_in_scenario_yaml() -> None:
    text = """
name: t
lab: {kind: qemu}
suites: {boot: {}}
slo:
  - {metric: boot.time_to_ssh_s, stat: p95, max: 30}
  - {metric: migration.guest_downtime_ms, ratio_to: migration.downtime_ms, stat: p95, max: 3}
"""
    scenario = parse_scenario(text)
    assert scenario.slo[0].ratio_to is None and scenario.slo[1].ratio_to == "migration.downtime_ms"


def test_regression_significant_fails_and_insignificant_passes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    base = _frame(tmp_path, "base", {
        "boot.time_to_ssh_s": [(float(v), {}) for v in rng.normal(2.0, 0.1, 40)],
        "v2v.throughput": [(float(v), {}) for v in rng.normal(100, 5, 40)],
        "tiny.sample_s": [(1.0, {}), (1.2, {})],
    })
    slower = _frame(tmp_path, "slow", {
        "boot.time_to_ssh_s": [(float(v), {}) for v in rng.normal(2.6, 0.1, 40)],  # 30% worse
        "v2v.throughput": [(float(v), {}) for v in rng.normal(130, 5, 40)],  # higher is better: improved
        "tiny.sample_s": [(1.5, {}), (1.8, {})],  # 45% worse on medians, but n=2: not significant
    })
    gates = {g.metric: g for g in evaluate_regression(slower, base, parse_percent("10%"))}
    ssh = gates["boot.time_to_ssh_s"]
    assert not ssh.passed and ssh.p_value is not None and ssh.p_value < 1e-6
    assert "significant regression beyond 10%" in ssh.reason and "% worse" in ssh.reason
    assert gates["v2v.throughput"].passed and "better" in gates["v2v.throughput"].reason
    tiny = gates["tiny.sample_s"]
    assert tiny.passed and tiny.reason.startswith("not significant")
    # Within the allowed regression: significant but small shift passes.
    assert all(g.passed for g in evaluate_regression(slower, slower, 0.1))
    loose = {g.metric: g for g in evaluate_regression(slower, base, 0.5)}
    assert loose["boot.time_to_ssh_s"].passed


def test_higher_is_better_regression_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = _frame(tmp_path, "b", {"v2v.throughput": [(float(v), {}) for v in rng.normal(100, 3, 30)]})
    worse = _frame(tmp_path, "w", {"v2v.throughput": [(float(v), {}) for v in rng.normal(70, 3, 30)]})
    (gate,) = evaluate_regression(worse, base, 0.1)
    assert not gate.passed and gate.baseline == pytest.approx(100, abs=3)


def test_finalize_with_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = _run(tmp_path, "base", {"boot.time_to_ssh_s": [(float(v), {}) for v in rng.normal(2, 0.1, 30)]})
    cur = _run(tmp_path, "cur", {"boot.time_to_ssh_s": [(float(v), {}) for v in rng.normal(3, 0.1, 30)]})
    result = finalize_run(cur.path, [SLO(metric="boot.time_to_ssh_s", max=100)], baseline=base.path,
                          max_regression=0.1)
    assert not result.gates_passed
    assert [g.kind for g in result.gate_results] == ["absolute", "regression"]
    assert "significant regression" in (cur.path / "report.html").read_text()
    bogus = tmp_path / "nope"
    bogus.mkdir()
    result = finalize_run(cur.path, [], baseline=bogus)
    assert not result.gates_passed and "baseline unusable" in result.gate_results[0].reason


def test_parse_percent() -> None:
    assert parse_percent("10%") == pytest.approx(0.1)
    assert parse_percent("0.25") == pytest.approx(0.25)
    assert parse_percent(" 2.5 % ") == pytest.approx(0.025)
    for bad in ("ten", "10", "-5%", ""):
        with pytest.raises(ValueError, match="max regression"):
            parse_percent(bad)


@pytest.mark.parametrize(("metric", "unit", "direction"), [
    ("boot.time_to_ssh_s", "s", "lower"),
    ("migration.downtime_ms", "ms", "lower"),
    ("density.vm_overhead_mib", "MiB", "lower"),
    ("density.capacity_vms", "vms", "higher"),
    ("v2v.convert_throughput_mibps", "MiB/s", "higher"),
    ("load.http_requests", "req/s", "higher"),
    ("load.failure_rate", "1/s", "lower"),
    ("migration.failures", "count", "lower"),
])
def test_direction(metric: str, unit: str, direction: str) -> None:
    assert better(metric, unit) == direction


def test_a_gate_line_says_what_was_observed(tmp_path: Path) -> None:
    df = _frame(tmp_path, "r1", {"boot.time_to_ssh_s": [(8.7, {}), (8.7, {})]})
    ok = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="p95", max=60))
    assert ok.line() == "ok   p95(boot.time_to_ssh_s) = 8.7 s <= 60 s"
    bad = evaluate_slo(df, SLO(metric="boot.time_to_ssh_s", stat="p95", max=5))
    assert bad.line() == "FAIL p95(boot.time_to_ssh_s) = 8.7 s <= 5 s: 8.7 s is above max 5 s by 3.7 s (74.0%)"
    empty = evaluate_slo(df, SLO(metric="boot.nothing_s", stat="p95", max=5))
    assert empty.line() == "FAIL p95(boot.nothing_s) = n/a <= 5: no samples"
