"""The results store: samples survive concurrent writers and crashes; runs load into pandas."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtproof.reports.results import (
    NotARunDirectory,
    RunDirectory,
    Sample,
    SampleSink,
    effective_status,
    load_runs,
    new_run_id,
    read_manifest,
    read_samples,
)

WRITERS = 6
PER_WRITER = 400


def _writer(run_dir: str, worker: int) -> None:
    sink = SampleSink(Path(run_dir))
    for i in range(PER_WRITER):
        # Long labels make each line several KiB, so torn writes would show.
        sink.record("test.value", i, "count", worker=str(worker), i=str(i), pad="x" * (1000 + worker * 500))


def test_concurrent_writers_lose_and_tear_nothing(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path, new_run_id(), {"scenario": {"name": "t"}})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(run.path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    parsed = read_samples(run.path)
    assert parsed.corrupt_lines == 0
    assert len(parsed.samples) == WRITERS * PER_WRITER
    seen = {(s.labels["worker"], s.labels["i"]) for s in parsed.samples}
    assert len(seen) == WRITERS * PER_WRITER


def test_sample_round_trip() -> None:
    sample = Sample("boot.time_to_ssh_s", 2.5, "s", {"vm": "a"}, 123.0)
    assert Sample.from_json(sample.to_json()) == sample


def test_manifest_lifecycle_and_dataframe(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path, "r1", {"scenario": {"name": "t"}, "lab": {"kind": "qemu"}})
    assert read_manifest(run.path)["status"] == "running"
    assert effective_status(run.manifest()) == "running"  # this process owns it and is alive
    run.sink.record("m", 1.0, "s", vm="a")
    run.sink.record("m", 3.0, "s", vm="b")
    run.finish("passed")
    other = RunDirectory.create(tmp_path, "r2", {})
    other.sink.record("m", 2.0, "s", vm="a")
    other.finish("failed")
    df = load_runs([run.path, other.path])
    assert sorted(df["value"]) == [1.0, 2.0, 3.0]
    assert set(df["run_id"]) == {"r1", "r2"}
    assert set(df["label.vm"]) == {"a", "b"}
    assert dict(zip(df["run_id"], df["status"], strict=False)) == {"r1": "passed", "r2": "failed"}


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    run = RunDirectory.create(tmp_path, "r", {})
    run.sink.record("m", 1.0, "s")
    with open(run.path / "samples.jsonl", "a") as fh:
        fh.write('{"metric": "m", "val\n')
        fh.write("not json at all\n")
    run.sink.record("m", 2.0, "s")
    parsed = read_samples(run.path)
    assert [s.value for s in parsed.samples] == [1.0, 2.0]
    assert parsed.corrupt_lines == 2


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(NotARunDirectory, match="not a run directory"):
        read_manifest(tmp_path)


CHILD = """
import sys, time
from pathlib import Path
from virtproof.reports.results import RunDirectory
run = RunDirectory.create(Path(sys.argv[1]), "killed", {"scenario": {"name": "t"}})
run.sink.record("before.kill", 1.0, "s")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_run_killed_with_sigkill_reads_as_incomplete(tmp_path: Path, project_root: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=project_root
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    run_dir = tmp_path / "killed"
    assert effective_status(read_manifest(run_dir)) == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert effective_status(manifest) == "incomplete"
    df = load_runs([run_dir])
    assert list(df["metric"]) == ["before.kill"]
    assert list(df["status"]) == ["incomplete"]


def test_run_ids_sort_by_time() -> None:
    first = new_run_id()
    time.sleep(1.01)
    assert new_run_id() > first
