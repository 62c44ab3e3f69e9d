"""Host-side measurements from /proc: host CPU and memory, per-process RSS and CPU, the harness's own CPU.

- Host memory: ``/proc/meminfo``; "used" is ``MemTotal - MemAvailable`` (what the kernel could
  not hand out without swapping), so page cache does not count.
- Host CPU: ``/proc/stat``'s first line; busy is everything but ``idle`` and ``iowait``.
- A process's RSS: ``VmRSS`` in ``/proc/<pid>/status`` (``Rss`` of ``smaps_rollup`` as fallback).
- CPU time of a process: ``utime + stime`` of ``/proc/<pid>/stat``, which sums all its threads;
  ``/proc/self/stat`` so gives the harness's own CPU including its SSH/QMP/pool threads.

The same ``parse_meminfo`` reads a guest's ``/proc/meminfo`` fetched over SSH.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


class MetricUnavailable(RuntimeError):
    """A /proc file is missing or unreadable (the process has gone, or this is not Linux)."""


@dataclass(frozen=True)
class MemInfo:
    """The fields of a ``/proc/meminfo`` the density suite needs, in KiB."""

    total_kib: int
    free_kib: int
    available_kib: int

    @property
    def used_kib(self) -> int:
        return self.total_kib - self.available_kib

    @property
    def used_fraction(self) -> float:
        return self.used_kib / self.total_kib if self.total_kib else 0.0

    @property
    def available_mib(self) -> float:
        return self.available_kib / 1024


def parse_meminfo(text: str) -> MemInfo:
    """Parse ``/proc/meminfo`` text; ValueError naming the field if one is missing."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    for needed in ("MemTotal", "MemFree"):
        if needed not in fields:
            raise ValueError(f"meminfo has no {needed} line")
    return MemInfo(fields["MemTotal"], fields["MemFree"], fields.get("MemAvailable", fields["MemFree"]))


def host_memory() -> MemInfo:
    try:
        return parse_meminfo((PROC / "meminfo").read_text())
    except OSError as exc:
        raise MetricUnavailable(f"/proc/meminfo: {exc}") from exc


@dataclass(frozen=True)
class CpuTimes:
    """Host-wide jiffies from /proc/stat: total and busy (all but idle and iowait)."""

    total: int
    busy: int


def parse_proc_stat(text: str) -> CpuTimes:
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
            # already inside user/nice, so only the first eight add up to the total.
            total = sum(values[:8])
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return CpuTimes(total, total - idle)
    raise ValueError("/proc/stat has no aggregate cpu line")


def host_cpu() -> CpuTimes:
    try:
        return parse_proc_stat((PROC / "stat").read_text())
    except OSError as exc:
        raise MetricUnavailable(f"/proc/stat: {exc}") from exc


def _stat_fields(pid: int | str) -> list[str]:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError as exc:
        raise MetricUnavailable(f"/proc/{pid}/stat: {exc}") from exc
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, all of its threads (not its waited children)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def process_threads(pid: int | str = "self") -> int:
    return int(_stat_fields(pid)[17])  # num_threads (field 20)


def process_rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    for name, key in (("status", "VmRSS:"), ("smaps_rollup", "Rss:")):
        try:
            text = (PROC / str(pid) / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise MetricUnavailable(f"no RSS for pid {pid} (has it exited?)")


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    host: CpuTimes
    harness_s: float


@dataclass(frozen=True)
class CpuUsage:
    """CPU use between two snapshots, as fractions of the host's whole capacity (all cores)."""

    wall_s: float
    host_busy_fraction: float
    harness_fraction: float  # the harness's CPU seconds / (wall seconds x cores)
    harness_share_of_busy: float  # the harness's CPU seconds / host busy CPU seconds


def cpu_snapshot() -> CpuSnapshot:
    return CpuSnapshot(time.monotonic(), host_cpu(), process_cpu_seconds("self"))


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot, cpus: int | None = None) -> CpuUsage:
    cpus = cpus or os.cpu_count() or 1
    wall = max(after.wall - before.wall, 1e-6)
    total = after.host.total - before.host.total
    busy = after.host.busy - before.host.busy
    busy_fraction = busy / total if total > 0 else 0.0
    harness = max(after.harness_s - before.harness_s, 0.0)
    busy_s = busy / CLOCK_TICKS
    return CpuUsage(
        wall,
        busy_fraction,
        harness / (wall * cpus),
        harness / busy_s if busy_s > 0 else 0.0,
    )


@dataclass(frozen=True)
class ProcessMemory:
    """A process's resident memory in MiB: total, and its anonymous, file-backed and shmem parts."""

    rss_mib: float
    anon_mib: float
    file_mib: float
    shmem_mib: float

    @property
    def private_mib(self) -> float:
        """What this process alone holds (anonymous and shmem pages; libraries are shared)."""
        return self.anon_mib + self.shmem_mib


def process_memory(pid: int) -> ProcessMemory:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError as exc:
        raise MetricUnavailable(f"/proc/{pid}/status: {exc}") from exc
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            values[name] = int(rest.split()[0]) / 1024
    if "VmRSS" not in values:
        raise MetricUnavailable(f"no VmRSS for pid {pid} (has it exited?)")
    return ProcessMemory(
        values["VmRSS"], values.get("RssAnon", values["VmRSS"]), values.get("RssFile", 0.0), values.get("RssShmem", 0.0)
    )


def oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed since boot (``oom_kill`` in /proc/vmstat)."""
    try:
        text = (PROC / "vmstat").read_text()
    except OSError as exc:
        raise MetricUnavailable(f"/proc/vmstat: {exc}") from exc
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return 0


def set_oom_score_adj(pid: int | str, value: int) -> int | None:
    """Set a process's ``oom_score_adj``; return the previous value, or None if not allowed."""
    path = PROC / str(pid) / "oom_score_adj"
    try:
        previous = int(path.read_text())
        path.write_text(str(value))
    except (OSError, ValueError):
        return None
    return previous
