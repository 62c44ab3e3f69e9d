"""The migration suite's scenario section: defaults, labels, and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtproof.lab.platform import MigrationPolicy
from virtproof.scenarios.migration import (
    DirtyWorkload,
    HttpWorkload,
    IdleWorkload,
    MemcheckWorkload,
    policy_label,
    workload_label,
)
from virtproof.scenarios.model import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent


def _text(nodes: int = 2, suite: str = "pattern: sequential", memory: str = "256Mi") -> str:
    return (
        "name: m\n"
        f"lab: {{kind: qemu, nodes: {nodes}}}\n"
        f"guest: {{memory: {memory}}}\n"
        "suites:\n"
        "  migration:\n"
        f"    {suite}\n"
    )


def test_shipped_scenarios_load() -> None:
    suite = load_scenario(ROOT / "scenarios/migration.yaml").scenario.suites.migration
    assert suite is not None and suite.pattern == "sequential" and isinstance(suite.workload, MemcheckWorkload)
    quick = load_scenario(ROOT / "tests/migration/quick.yaml").scenario.suites.migration
    assert quick is not None and quick.faults and quick.memcheck is not None
    drain = load_scenario(ROOT / "scenarios/drain.yaml").scenario.suites.migration
    assert drain is not None and drain.pattern == "evacuate" and (drain.count, drain.concurrency) == (4, 2)
    assert drain.http is not None and drain.memcheck is not None
    assert workload_label(drain.workload) == "http-2u-10rps+memcheck-32mib-4mibps"
    convergence = load_scenario(ROOT / "scenarios/convergence.yaml").scenario.suites.migration
    assert convergence is not None and convergence.sweep is not None and convergence.round_trips == 0
    assert convergence.sweep.rates(32) == [0.0, 9.14, 18.29, 27.43, 36.57, 45.71, 54.86, 64.0]  # 0 to 2x, 8 steps
    assert convergence.sweep.modes == ["precopy", "auto_converge", "postcopy"]


def test_defaults_and_policy() -> None:
    suite = parse_scenario(_text()).suites.migration
    assert suite is not None
    assert suite.round_trips == 1 and isinstance(suite.workload, IdleWorkload)
    assert suite.policy.policy() == MigrationPolicy("precopy", None, None, 120.0)
    assert suite.probe_interval_ms <= 10  # 100 Hz or faster


@pytest.mark.parametrize("pattern", ["sequential", "evacuate", "round_robin"])
def test_one_node_lab_is_a_scenario_error_with_line(pattern: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_text(nodes=1, suite=f"pattern: {pattern}"), "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml:4: suites:"), message
    assert f"pattern {pattern} needs at least 2 nodes; the lab has 1" in message


@pytest.mark.parametrize("kind", ["dirty", "memcheck"])
def test_memory_workloads_must_fit_dev_shm(kind: str) -> None:
    with pytest.raises(ScenarioError, match=r"workload.mib 200 does not fit .*half of 256 MiB"):
        parse_scenario(_text(suite=f"workload: {{kind: {kind}, mib: 200}}"), "s.yaml")
    with pytest.raises(ScenarioError, match=r"workload.mib 200 does not fit"):
        parse_scenario(_text(suite=f"workload: [{{kind: http}}, {{kind: {kind}, mib: 200}}]"), "s.yaml")


def test_a_list_of_workloads() -> None:
    suite = parse_scenario(_text(suite="workload: [{kind: http, users: 2, rate: 10}, {kind: memcheck, mib: 16}]"))
    migration = suite.suites.migration
    assert migration is not None and len(migration.workloads) == 2
    assert migration.http == HttpWorkload(kind="http", users=2, rate=10)
    assert migration.memcheck == MemcheckWorkload(kind="memcheck", mib=16) and migration.dirty is None
    one = parse_scenario(_text(suite="workload: [{kind: memcheck}]")).suites.migration
    assert one is not None and isinstance(one.workload, MemcheckWorkload)  # a list of one is that one


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ("workload: [{kind: http}, {kind: http}]", "workload: lists a kind twice"),
        ("workload: [{kind: dirty}, {kind: memcheck}]", "workload: has both dirty and memcheck"),
        ("workload: [{kind: idle}, {kind: http}]", "workload: idle means no workload"),
        ("workload: []", "workload: an empty list"),
        ("workload: [{kind: http}, {kind: dance}]", "workload[1]: unknown kind 'dance'"),
        ("sweep: {steps: 4}\n    policy: {bandwidth_mibps: 32}", "sweep needs a memcheck workload"),
        ("sweep: {steps: 4}\n    workload: {kind: memcheck}", "sweep needs policy.bandwidth_mibps"),
        ("sweep: {steps: 1}", "sweep.steps: must be at least 2"),
        ("inject_corruption: {page: 3}", "inject_corruption needs a memcheck workload"),
        ("inject_corruption: {page: 9000}\n    workload: {kind: memcheck, mib: 32}", "outside the 32 MiB"),
        ("inject_corruption: {leg: 2}\n    workload: {kind: memcheck}", "inject_corruption.leg 2: the round trips"),
        ("round_trips: 0", "round_trips: 0 with neither sweep nor faults"),
    ],
)
def test_workload_sweep_and_injection_errors(suite: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_text(suite=suite), "s.yaml")
    assert message in str(info.value), str(info.value)


def test_parallel_needs_k_of_two_or_more() -> None:
    with pytest.raises(ScenarioError, match=r"s\.yaml:5: suites\.migration: pattern parallel"):
        parse_scenario(_text(suite="pattern: parallel"), "s.yaml")
    ok = parse_scenario(_text(suite="pattern: parallel\n    count: 3\n    concurrency: 2"))
    assert ok.suites.migration is not None and ok.suites.migration.concurrency == 2


@pytest.mark.parametrize(
    ("suite", "where"),
    [
        ("pattern: diagonal", "suites.migration.pattern: must be one of"),
        ("policy: {mode: turbo}", "suites.migration.policy.mode: must be one of"),
        ("policy: {bandwidth_mibps: 0}", "suites.migration.policy.bandwidth_mibps: must be at least 1"),
        ("workload: {kind: dance}", "suites.migration.workload: unknown kind 'dance'"),
        ("probe_interval_ms: 50", "suites.migration.probe_interval_ms: must be at most 10"),
        ("round_trip: 2", "suites.migration.round_trip: unknown key"),
    ],
)
def test_bad_parameters_name_the_field(suite: str, where: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_text(suite=suite), "s.yaml")
    assert str(info.value).startswith("s.yaml:6: " + where), str(info.value)


def test_labels() -> None:
    assert policy_label(MigrationPolicy()) == "precopy"
    assert policy_label(MigrationPolicy("postcopy", 32, 50)) == "postcopy-bw32-dt50"
    assert workload_label(IdleWorkload(kind="idle")) == "idle"
    assert workload_label(DirtyWorkload(kind="dirty", mib=48, rate_mibps=10)) == "dirty-48mib-10mibps"
    assert workload_label(HttpWorkload(kind="http", users=2, rate=20)) == "http-2u-20rps"
    assert workload_label(MemcheckWorkload(kind="memcheck", mib=32, rate_mibps=4)) == "memcheck-32mib-4mibps"
    assert workload_label(MemcheckWorkload(kind="memcheck", mib=48, rate_mibps=0)) == "memcheck-48mib-flat"
    both = (HttpWorkload(kind="http", users=2, rate=10), MemcheckWorkload(kind="memcheck", mib=32, rate_mibps=4))
    assert workload_label(both) == "http-2u-10rps+memcheck-32mib-4mibps"
