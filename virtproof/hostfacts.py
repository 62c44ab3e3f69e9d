"""What the run manifest says about the host and the software: for comparing runs honestly."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from virtproof import __version__

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _command_first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def git_commit() -> str | None:
    if not (PROJECT_ROOT / ".git").exists():
        return None
    commit = _command_first_line(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"])
    if commit is None:
        return None
    dirty = _command_first_line(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return commit + ("-dirty" if dirty else "")


def host_facts() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "os": _command_first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "qemu": _command_first_line(["qemu-system-x86_64", "--version"]),
    }


def versions() -> dict[str, Any]:
    return {"virtproof": __version__, "git_commit": git_commit(), "python": sys.version.split()[0]}
