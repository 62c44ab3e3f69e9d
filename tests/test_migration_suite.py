"""The migration suite end to end through ``virtproof run``: samples, labels, faults, no leftovers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from virtproof.lab.images.micro import GuestImage
from virtproof.reports.results import load_runs, read_manifest

from cli_run import CliRun

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

MOVE_METRICS = {
    "migration.total_s", "migration.downtime_ms", "migration.guest_downtime_ms", "migration.transferred_mib",
    "migration.setup_s",
}  # fmt: skip
LABELS = ("label.vm", "label.source", "label.target", "label.pattern", "label.policy", "label.workload", "label.mode")


def _run(virtproof_run: Callable[..., CliRun], scenario: Path) -> tuple[Path, pd.DataFrame]:
    run = virtproof_run(scenario, timeout=900)
    assert run.code == 0, run.output()
    run_dir = run.run_dir()
    return run_dir, load_runs([run_dir])


def _moves(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = df[df["metric"] == metric]
    return rows[rows["label.fault"].isna()] if "label.fault" in rows else rows


def test_sequential_dirty_round_trip_and_faults(
    root: None, tmp_path: Path, virtproof_run: Callable[..., CliRun], project_root: Path, micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:  # fmt: skip
    run_dir, df = _run(virtproof_run, project_root / "tests/migration/quick.yaml")
    lab_id = read_manifest(run_dir)["lab"]["lab_id"]
    # 2 guests x (there and back) = 4 moves, each with every metric and label
    for metric in MOVE_METRICS:
        rows = _moves(df, metric)
        assert len(rows) == 4, (metric, rows)
        assert rows[list(LABELS)].notna().all().all()
        assert set(rows["label.pattern"]) == {"sequential"} and set(rows["label.workload"]) == {"dirty-32mib"}
        assert set(rows["label.platform"]) == {"qemu"} and set(rows["label.mode"]) == {"precopy"}
    total = _moves(df, "migration.total_s")
    assert sorted(zip(total["label.source"], total["label.target"], strict=True)) == [
        ("node0", "node1"), ("node0", "node1"), ("node1", "node0"), ("node1", "node0")
    ]  # fmt: skip
    assert (_moves(df, "migration.guest_downtime_ms")["value"] > 0).all()
    assert (_moves(df, "migration.transferred_mib")["value"] > 1).all()
    assert "migration.failed" not in set(_moves(df, "migration.failed")["metric"])
    faults = df[df["metric"] == "migration.fault_reported_s"]
    assert set(faults["label.fault"]) == {"link_down", "destination_killed", "source_killed"}
    lost = df[df["metric"] == "migration.lost_guests"]
    assert list(lost["label.fault"]) == ["source_killed"]
    junit = (run_dir / "pytest-junit.xml").read_text()
    assert 'failures="0"' in junit and 'skipped="0"' in junit
    assert leftovers(lab_id) == []


def test_capped_precopy_under_http_load(
    root: None, tmp_path: Path, virtproof_run: Callable[..., CliRun], project_root: Path, micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:  # fmt: skip
    scenario = tmp_path / "par.yaml"
    scenario.write_text(
        "name: migration-http\nlab: {kind: qemu, nodes: 2}\nguest: {memory: 192Mi}\n"
        "suites:\n  migration:\n    count: 2\n    pattern: sequential\n    probe: tcp\n"
        "    workload: {kind: http, users: 2, rate: 10}\n"
        "    policy: {mode: precopy, bandwidth_mibps: 64, downtime_limit_ms: 100, timeout_s: 120}\n"
    )
    run_dir, df = _run(virtproof_run, scenario)
    for metric in (*MOVE_METRICS, "migration.http_failures"):
        rows = df[df["metric"] == metric]
        assert len(rows) == 4, (metric, rows)
        assert set(rows["label.policy"]) == {"precopy-bw64-dt100"} and set(rows["label.mode"]) == {"precopy"}
        assert set(rows["label.workload"]) == {"http-2u-10rps"} and set(rows["label.pattern"]) == {"sequential"}
    assert "migration.http_p99_ms" in set(df["metric"])
    requests = df[df["metric"] == "migration.http_failures"]["labels"].map(lambda labels: int(labels["requests"]))
    assert (requests > 0).all(), "locust made no request during a move"
    history = list((run_dir / "migration").glob("*/*-locust/locust_stats_history.csv"))
    assert len(history) == 2
    assert leftovers(read_manifest(run_dir)["lab"]["lab_id"]) == []


def test_evacuate_drains_the_node(
    root: None, tmp_path: Path, virtproof_run: Callable[..., CliRun], project_root: Path, micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:  # fmt: skip
    scenario = tmp_path / "evac.yaml"
    scenario.write_text(
        "name: migration-evacuate\nlab: {kind: qemu, nodes: 2}\nguest: {memory: 160Mi}\n"
        "suites:\n  migration:\n    count: 2\n    concurrency: 2\n    pattern: evacuate\n    probe: tcp\n"
    )
    run_dir, df = _run(virtproof_run, scenario)
    total = df[df["metric"] == "migration.total_s"]
    drained = total[total["label.policy"] == "drain"]
    assert len(drained) == 2 and set(drained["label.source"]) == {"node0"} and set(drained["label.target"]) == {"node1"}
    back = total[total["label.policy"] != "drain"]
    assert len(back) == 2 and set(back["label.target"]) == {"node0"}
    assert leftovers(read_manifest(run_dir)["lab"]["lab_id"]) == []
