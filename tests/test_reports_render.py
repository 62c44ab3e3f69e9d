"""report.html, summary.md, junit.xml, stats files and `virtproof compare`, from generated runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtproof import cli
from virtproof.reports.compare import render_comparison
from virtproof.reports.finalize import finalize_run
from virtproof.reports.results import RunDirectory
from virtproof.scenarios.model import SLO

from reports_testdata import XSS, finished, make_run


def test_finalize_writes_every_output(tmp_path: Path) -> None:
    run = finished(make_run(tmp_path, "r1", vm_name=XSS))
    (run.path / "pytest-junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2" failures="1" errors="0" '
        'skipped="0"><testcase classname="suites.boot" name="test_boot"/><testcase classname="suites.x" '
        'name="test_x"><failure message="boom">boom</failure></testcase></testsuite></testsuites>'
    )
    slos = [SLO(metric="boot.time_to_ssh_s", stat="p95", max=1000.0),
            SLO(metric="boot.time_to_ssh_s", stat="p50", max=0.001),
            SLO(metric="never.recorded_s", max=1.0)]
    result = finalize_run(run.path, slos)
    names = {p.name for p in result.files}
    assert {"report.html", "summary.md", "junit.xml", "stats.csv", "stats.json"} <= names
    assert not result.gates_passed
    assert [g.passed for g in result.gate_results] == [True, False, False]
    assert result.gate_results[2].reason == "no samples"
    assert "above max" in result.gate_results[1].reason

    junit = ET.parse(run.path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in junit}
    assert set(suites) == {"pytest", "virtproof.gates"}
    assert junit.get("tests") == "5" and junit.get("failures") == "3"
    gate_cases = suites["virtproof.gates"].findall("testcase")
    assert [c.find("failure") is not None for c in gate_cases] == [False, True, True]

    stats = json.loads((run.path / "stats.json").read_text())
    row = next(r for r in stats["stats"] if r["metric"] == "boot.time_to_ssh_s" and r["labels"] == "")
    assert row["count"] == 30 and row["P95"] == row["p95"] and row["Avg"] == row["mean"]
    # per-label-set rows use the dimension label (node), not the per-VM identity label
    sets = {r["labels"] for r in stats["stats"] if r["metric"] == "boot.time_to_ssh_s"}
    assert sets == {"", "node=node-0", "node=node-1"}
    csv_header = (run.path / "stats.csv").read_text().splitlines()[0].split(",")
    assert {"count", "mean", "p50", "p95", "p99", "min", "max", "P50", "P95", "P99", "Max", "Avg"} <= set(csv_header)

    summary = (run.path / "summary.md").read_text()
    assert "❌ 2 of 3 gate(s) failed" in summary and "no samples" in summary

    html = (run.path / "report.html").read_text()
    for key in ("chart-boot_cdf", "chart-boot_phases", "chart-migration", "chart-density",
                "chart-v2v_verdicts", "chart-v2v_metrics"):
        assert f'id="{key}"' in html
    assert "<script" not in html
    assert "node_drain not offered &lt;script&gt;alert(1)&lt;/script&gt;" in html  # a skip reason, as text
    assert "vm=&lt;script&gt;alert(1)&lt;/script&gt;-" in html  # a VM label in the worst-samples table
    assert f"{row['p50']:.4g}" in html
    assert "http://" not in html and "https://" not in html


def test_charts_only_for_metrics_that_exist(tmp_path: Path) -> None:
    run = finished(make_run(tmp_path, "r1", extra_metrics=False, outcomes=False))
    finalize_run(run.path, [])
    html = (run.path / "report.html").read_text()
    assert 'id="chart-boot_cdf"' in html and 'id="chart-boot_phases"' in html
    for absent in ("chart-migration", "chart-density", "chart-v2v"):
        assert absent not in html
    assert "No test outcomes were recorded" in html


def test_empty_run_renders_and_no_samples_fails(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path, "empty", {"scenario": {"name": "q"}})
    result = finalize_run(run.path, [SLO(metric="boot.time_to_ssh_s", stat="count", min=1)])
    assert not result.gates_passed and result.gate_results[0].reason == "no samples"
    assert "No samples were recorded" in (run.path / "report.html").read_text()


def test_corrupt_lines_skipped_counted_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path, "r1", extra_metrics=False, outcomes=False, n_boot=5)
    with open(run.path / "samples.jsonl", "a") as fh:
        fh.write('{"metric": "boot.time_to_ssh_s", "value": \n')  # torn write
        fh.write("not json at all\n")
        fh.write('{"metric": "boot.time_to_ssh_s", "value": "fast", "unit": "s", "timestamp": 1}\n')
        fh.write('{"metric": "boot.time_to_ssh_s", "value": 9.5, "unit": "s", "labels": {}, "timestamp": 2}\n')
    finished(run)
    result = finalize_run(run.path, [SLO(metric="boot.time_to_ssh_s", stat="count", min=6, max=6)])
    assert result.corrupt_lines == 3
    assert result.gates_passed  # the 5 good samples + the valid line after the corrupt ones: none lost
    assert any("skipped 3 corrupt line" in r.getMessage() for r in caplog.records)
    assert "3 corrupt line(s) in samples.jsonl were skipped" in (run.path / "report.html").read_text()
    assert "3 corrupt line(s)" in (run.path / "summary.md").read_text()


def test_unreadable_pytest_junit_is_noted_not_fatal(tmp_path: Path) -> None:
    run = finished(make_run(tmp_path, "r1", extra_metrics=False, n_boot=3))
    (run.path / "pytest-junit.xml").write_text("<testsuites><testsuite")
    finalize_run(run.path, [SLO(metric="boot.time_to_ssh_s", max=1e9)])
    root = ET.parse(run.path / "junit.xml").getroot()
    assert [s.get("name") for s in root] == ["virtproof.gates"]
    assert "pytest-junit.xml is unreadable" in (run.path / "summary.md").read_text()


def _compare(tmp_path: Path, runs: list[Path], baseline: Path | None = None) -> tuple[str, str, str]:
    out = tmp_path / "cmp"
    html = render_comparison(runs, out, baseline=baseline)
    return html.read_text(), (out / "comparison.md").read_text(), (out / "comparison.csv").read_text()


def test_compare_marks_best_ratio_and_significance(tmp_path: Path) -> None:
    fast = finished(make_run(tmp_path, "fast", seed=1, scale=1.0, platform="qemu", n_boot=60))
    slow = finished(make_run(tmp_path, "slow", seed=2, scale=2.0, platform="kubevirt",
                             capabilities=("boot", "live_migration"), n_boot=60))
    html, md_text, csv_text = _compare(tmp_path, [fast.path, slow.path])
    rows = [line.split(",") for line in csv_text.splitlines()]
    header = rows[0]
    ssh = [dict(zip(header, r, strict=True)) for r in rows[1:] if r[0] == "boot.time_to_ssh_s"]
    by_run = {r["run_id"]: r for r in ssh}
    assert by_run["fast"]["best"] == "True" and by_run["slow"]["best"] == "False"
    assert 1.7 < float(by_run["slow"]["ratio_to_best"]) < 2.3
    assert by_run["slow"]["significant"] == "True"
    assert float(by_run["fast"]["ratio_to_best"]) == 1.0
    # higher-is-better metric: capacity equal, throughput equal -> both best ratio 1
    cap = [dict(zip(header, r, strict=True)) for r in rows[1:] if r[0] == "density.capacity_vms"]
    assert {c["better"] for c in cap} == {"higher"}
    # parity side by side: post_copy passed on qemu, skipped with reason on kubevirt (not offered)
    assert "platform lacks post_copy" in html
    assert "kubevirt" in html and "qemu" in html
    assert "chart-ratio_to_best" in html and "chart-cdf_boot.time_to_ssh_s" in html
    assert "| boot.time_to_ssh_s |" in md_text


def test_compare_different_scenarios_and_incomplete_run(tmp_path: Path) -> None:
    a = finished(make_run(tmp_path, "a", scenario="quickstart"))
    b = make_run(tmp_path, "b", scenario="boot-only", extra_metrics=False)
    b.update_manifest(owner={"pid": 999_999_999, "boot_id": "gone", "host": "elsewhere"})  # owner died
    html, md_text, csv_text = _compare(tmp_path, [a.path, b.path])
    assert "different scenarios" in html and "a ran quickstart" in html and "b ran boot-only" in html
    assert "INCOMPLETE" in html and "INCOMPLETE" in md_text
    assert "migration.total_s" in html.split("Metrics not in every run")[1]
    assert "not in every run" in csv_text
    shared = {line.split(",")[0] for line in csv_text.splitlines()[1:] if "not in every run" not in line}
    assert shared == {"boot.time_to_running_s", "boot.time_to_ssh_s", "boot.time_to_command_s"}


def test_compare_with_baseline_tests_against_baseline(tmp_path: Path) -> None:
    base = finished(make_run(tmp_path, "base", seed=3, scale=1.0, n_boot=60))
    other = finished(make_run(tmp_path, "other", seed=4, scale=1.5, n_boot=60))
    html, _, csv_text = _compare(tmp_path, [other.path], baseline=base.path)
    assert "baseline" in html
    ids = {line.split(",")[3] for line in csv_text.splitlines()[1:]}
    assert ids == {"base", "other"}


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("virtproof.commands.compare",))
    return cli.main(argv)


def test_cli_compare_not_a_run_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = finished(make_run(tmp_path, "good", n_boot=3, extra_metrics=False))
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    assert _cli(["compare", str(good.path), str(bogus), "-o", str(tmp_path / "o")], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0] and "not a run directory" in err[0]
    assert _cli(["compare", str(tmp_path / "missing")], monkeypatch) == 2
    assert _cli(["compare", str(good.path), "-o", str(tmp_path / "o")], monkeypatch) == 0
    assert (tmp_path / "o" / "comparison.html").exists()
