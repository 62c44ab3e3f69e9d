"""Samples, run manifests and the run directory store.

A run directory ``results/<run-id>/`` holds ``manifest.json`` (rewritten atomically) and
``samples.jsonl`` (one JSON Sample per line, appended under an exclusive lock and fsynced as
each measurement happens, so several pytest-xdist workers can write at once and a crash
loses nothing already measured).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from virtproof.core.processes import Owner

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"

RunStatus = Literal["running", "passed", "failed", "incomplete"]


class NotARunDirectory(ValueError):
    """A path given as a run directory has no readable manifest."""


@dataclass(frozen=True)
class Sample:
    """One measurement, PerfKitBenchmarker style: metric, value, unit, labels, timestamp."""

    metric: str
    value: float
    unit: str
    labels: Mapping[str, str] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(
            {
                "metric": self.metric,
                "value": self.value,
                "unit": self.unit,
                "labels": dict(self.labels),
                "timestamp": self.timestamp,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Sample:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("sample is not a JSON object")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValueError("sample labels are not an object")
        return cls(
            metric=str(raw["metric"]),
            value=float(raw["value"]),
            unit=str(raw["unit"]),
            labels={str(k): str(v) for k, v in labels.items()},
            timestamp=float(raw["timestamp"]),
        )


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxx``: sortable, and unique enough for one host."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class SampleSink:
    """Appends Samples to a run's samples.jsonl; safe across processes and threads."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / SAMPLES

    def append(self, sample: Sample) -> None:
        self.extend([sample])

    def extend(self, samples: Iterable[Sample]) -> None:
        data = "".join(s.to_json() + "\n" for s in samples).encode()
        if not data:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def record(self, metric: str, value: float, unit: str, **labels: str) -> Sample:
        sample = Sample(metric, float(value), unit, {k: str(v) for k, v in labels.items()})
        self.append(sample)
        return sample


def _atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDirectory:
    """One run's directory: its manifest and its samples."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sink = SampleSink(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, results_root: Path, run_id: str, manifest: Mapping[str, Any]) -> RunDirectory:
        path = results_root / run_id
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path)
        body = dict(manifest)
        body.update(
            run_id=run_id,
            status="running",
            start_time=datetime.now(UTC).isoformat(),
            end_time=None,
            owner=Owner.current().as_dict(),
        )
        _atomic_write_json(path / MANIFEST, body)
        (path / SAMPLES).touch()
        return run

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, **fields: Any) -> None:
        body = self.manifest()
        body.update(fields)
        _atomic_write_json(self.path / MANIFEST, body)

    def finish(self, status: RunStatus) -> None:
        self.update_manifest(status=status, end_time=datetime.now(UTC).isoformat())


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NotARunDirectory(f"{run_dir}: not a run directory (no {MANIFEST})") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise NotARunDirectory(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(body, dict) or "run_id" not in body:
        raise NotARunDirectory(f"{path}: not a virtproof manifest")
    return body


def effective_status(manifest: Mapping[str, Any]) -> RunStatus:
    """The manifest's status, except a ``running`` run whose owner is gone is ``incomplete``."""
    status = str(manifest.get("status", "incomplete"))
    if status != "running":
        return status if status in ("passed", "failed", "incomplete") else "incomplete"  # type: ignore[return-value]
    owner = Owner.from_mapping(manifest.get("owner") or {})
    return "running" if owner is not None and owner.alive() else "incomplete"


@dataclass(frozen=True)
class SampleFile:
    """The samples read from one file, and how many lines could not be parsed."""

    samples: list[Sample]
    corrupt_lines: int


def read_samples(run_dir: Path) -> SampleFile:
    """Parse samples.jsonl, skipping (and counting) corrupt or torn lines."""
    samples: list[Sample] = []
    corrupt = 0
    path = run_dir / SAMPLES
    if not path.exists():
        return SampleFile(samples, 0)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                samples.append(Sample.from_json(line))
            except (ValueError, KeyError, TypeError):
                corrupt += 1
    return SampleFile(samples, corrupt)


SAMPLE_COLUMNS = ["run_id", "status", "metric", "value", "unit", "timestamp", "labels"]


def _iter_rows(run_dir: Path) -> Iterator[dict[str, Any]]:
    manifest = read_manifest(run_dir)
    status = effective_status(manifest)
    for s in read_samples(run_dir).samples:
        row: dict[str, Any] = {
            "run_id": manifest["run_id"],
            "status": status,
            "metric": s.metric,
            "value": s.value,
            "unit": s.unit,
            "timestamp": s.timestamp,
            "labels": dict(s.labels),
        }
        for key, value in s.labels.items():
            row[f"label.{key}"] = value
        yield row


def load_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """Load one or many runs into one DataFrame: a row per sample, labels as ``label.*`` columns."""
    import pandas as pd  # only readers need it; the sample writers in every worker do not

    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        rows.extend(_iter_rows(Path(run_dir)))
    if not rows:
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    return pd.DataFrame(rows)
