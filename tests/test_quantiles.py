"""Quantiles against hand-computed values: nearest rank, linear interpolation, and kube-burner's
method (montanaflynn/stats v0.7.1 Percentile, truncated to whole ms by metrics.NewLatencySummary)."""

from __future__ import annotations

import math

import pytest

from virtproof.instruments.latency import summarize, summarize_all
from virtproof.instruments.quantiles import kube_burner, linear, nearest_rank

TEN = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]


def test_nearest_rank() -> None:
    assert nearest_rank(TEN, 50) == 50.0  # rank ceil(5.0) = 5
    assert nearest_rank(TEN, 95) == 100.0  # rank ceil(9.5) = 10
    assert nearest_rank([3.0], 99) == 3.0
    assert math.isnan(nearest_rank([], 50))


def test_linear() -> None:
    assert linear(TEN, 50) == 55.0  # position 4.5: between 50 and 60
    assert linear(TEN, 95) == pytest.approx(95.5)  # position 8.55
    assert linear([1.0, math.inf], 50) == math.inf


def test_kube_burner_whole_and_fractional_ranks() -> None:
    # n = 10: p50 -> index 5.0 (whole): the 5th value; p95 -> 9.5: mean of the 9th and 10th;
    # p99 -> 9.9: mean of the 9th and 10th as well.
    assert kube_burner(TEN, 50) == 50.0
    assert kube_burner(TEN, 95) == 95.0
    assert kube_burner(TEN, 99) == 95.0
    # n = 3 (unsorted input): p50 -> 1.5: mean of the 1st and 2nd; p95 -> 2.85: 2nd and 3rd.
    assert kube_burner([700.0, 100.0, 300.0], 50) == 200.0
    assert kube_burner([700.0, 100.0, 300.0], 95) == 500.0
    assert kube_burner([42.0], 99) == 42.0
    assert math.isnan(kube_burner([], 50))
    assert math.isnan(kube_burner([1.0, 2.0], 0))


def test_summaries_truncate_like_go_and_drop_vmis_that_never_ran() -> None:
    s = summarize("VMIRunning", [1000.9, 2000.4, 3001.7])  # ms truncated first: 1000, 2000, 3001
    assert (s.p50, s.p95, s.p99, s.min, s.max, s.avg) == (1500, 2500, 2500, 1000, 3001, 2000)
    per_vm = [
        {"VMICreated": 5.0, "VMIRunning": 1000.0, "VMReady": 1500.0},
        {"VMICreated": 7.0, "VMIRunning": 3000.0, "VMReady": 3400.0},
        {"VMICreated": 9.0, "VMIPending": 50.0},  # never Running: kube-burner leaves it out
    ]
    by_name = {q.quantile_name: q for q in summarize_all(per_vm)}
    assert list(by_name) == ["VMICreated", "VMIRunning", "VMReady"]
    assert by_name["VMICreated"].count == 2 and by_name["VMICreated"].avg == 6
    assert by_name["VMReady"].p50 == 1500 and by_name["VMReady"].p99 == 2450
