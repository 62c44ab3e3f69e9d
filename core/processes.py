"""Processes on this host: alive or not, their command lines, found by command line, whether this
one runs as root, and who owns a lab or a run.

An owner is recorded as (pid, boot id, host name): a pid alone is reused after a reboot, and a
run directory may be read on another machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def boot_id() -> str:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``), or "" where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_cmdline(pid: int) -> str:
    """The command line of ``pid`` with NULs as spaces, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_matching(marker: str, *, program: str = "") -> list[int]:
    """Live processes on this host (this one excepted) whose command line carries ``marker`` and,
    given ``program``, starts with it; by pid."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            pid = int(entry.name)
            cmd = process_cmdline(pid)
            if cmd.startswith(program) and marker in cmd and pid_alive(pid):
                found.append(pid)
    return sorted(found)


def is_root() -> bool:
    """This process runs as root (effective uid 0): network namespaces, bridges and taps need it."""
    return os.geteuid() == 0


@dataclass(frozen=True)
class Owner:
    """The process that owns a lab or a run."""

    pid: int
    boot_id: str
    host: str

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), boot_id(), os.uname().nodename)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Owner | None:
        """The owner recorded in ``data`` (``pid``, ``boot_id``, ``host``), or None if unreadable."""
        pid = data.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return None
        return cls(pid, str(data.get("boot_id", "")), str(data.get("host", os.uname().nodename)))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def alive(self) -> bool:
        """Still running: same host, same boot, and the pid is a live process."""
        return self.host == os.uname().nodename and self.boot_id == boot_id() and pid_alive(self.pid)
