"""HTTP load with locust, always in its own process (never imported here: gevent must not patch
the harness). Headless, bounded in time (``--run-time``) and in requests (``VP_LOCUST_MAX_REQUESTS``),
with locust's CSV stats history (``<prefix>_stats_history.csv``), its JSON summary, and a
per-request log from ``instruments/locustfile.py`` from which any window (one migration) is cut.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from virtproof.instruments.quantiles import nearest_rank

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


class LoadError(RuntimeError):
    """locust could not run (not installed, or it exited at once)."""


@dataclass(frozen=True)
class LoadSpec:
    url: str  # http://host:port
    users: int = 4
    rate: float = 20.0  # requests per second, all users together
    run_time_s: float = 300.0  # upper bound; stop() ends it earlier
    max_requests: int = 0  # 0: bounded by time only
    paths: tuple[str, ...] = ("/name",)

    def __post_init__(self) -> None:
        if self.users < 1 or self.rate <= 0 or self.run_time_s <= 0:
            raise ValueError("load needs users >= 1, rate > 0 and run_time_s > 0")


@dataclass(frozen=True)
class RequestRecord:
    start: float
    ms: float
    ok: bool


@dataclass(frozen=True)
class LoadWindow:
    """What users felt in one window: requests started in it, failures, latency peak."""

    requests: int
    failures: int
    p99_ms: float | None
    max_ms: float | None


class LocustRun:
    """One headless locust process against ``spec.url``; ``stop`` ends it and returns its log."""

    def __init__(self, spec: LoadSpec, directory: Path) -> None:
        self.spec = spec
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.prefix = directory / "locust"
        self.request_log = directory / "requests.log"
        self.request_log.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(spec.users), "-r", str(spec.users), "-t", f"{math.ceil(spec.run_time_s)}s",
            "--host", spec.url, "--csv", str(self.prefix), "--csv-full-history",
            "--json-file", str(self.prefix), "--only-summary", "--stop-timeout", "2",
            "--exit-code-on-error", "0", "--loglevel", "WARNING", "--logfile", str(directory / "locust.log"),
        ]  # fmt: skip
        env = {
            **os.environ,
            "VP_LOCUST_PATHS": ",".join(spec.paths),
            "VP_LOCUST_RATE_PER_USER": f"{spec.rate / spec.users:.6f}",
            "VP_LOCUST_MAX_REQUESTS": str(spec.max_requests),
            "VP_LOCUST_REQUEST_LOG": str(self.request_log),
        }
        self._out = open(directory / "locust.stdout", "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            self._out.close()
            raise LoadError(f"cannot start locust: {exc}") from exc

    def wait_started(self, timeout: float = 60.0) -> None:
        """Block until the first request was made; LoadError if locust exited or stayed silent."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.request_log.exists() and self.request_log.stat().st_size > 0:
                return
            if self.popen.poll() is not None:
                raise LoadError(f"locust exited with {self.popen.returncode}: {self._tail()}")
            time.sleep(0.1)
        raise LoadError(f"locust made no request within {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return (self.directory / "locust.stdout").read_text(errors="replace")[-400:].strip()
        except OSError:
            return ""

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> list[RequestRecord]:
        """SIGINT (locust writes its stats and exits), then SIGKILL; returns the request log."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._out.close()
        return self.records()

    def records(self) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        try:
            text = self.request_log.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                try:
                    out.append(RequestRecord(float(parts[0]), float(parts[1]), parts[2] == "ok"))
                except ValueError:
                    continue
        return out

    @property
    def history_csv(self) -> Path:
        return Path(f"{self.prefix}_stats_history.csv")

    def __enter__(self) -> LocustRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def window(records: list[RequestRecord], start: float, end: float) -> LoadWindow:
    """Requests started within [start, end]: count, failures, p99 and max latency."""
    inside = [r for r in records if start <= r.start <= end]
    latencies = [r.ms for r in inside if r.ok]
    return LoadWindow(
        len(inside),
        sum(1 for r in inside if not r.ok),
        nearest_rank(latencies, 99) if latencies else None,
        max(latencies) if latencies else None,
    )
