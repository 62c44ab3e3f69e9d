"""What the ``virtproof_run`` fixture returns: one finished ``virtproof`` command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliRun:
    """One finished ``virtproof`` command."""

    proc: subprocess.CompletedProcess[str]
    results: Path

    @property
    def code(self) -> int:
        return self.proc.returncode

    def output(self, limit: int = 4000) -> str:
        """The tail of stdout and stderr, for assertion messages."""
        return self.proc.stdout[-limit:] + self.proc.stderr[-limit:]

    def run_dir(self) -> Path:
        """The one run directory the command made under its results root."""
        runs = [p for p in self.results.iterdir() if p.is_dir()] if self.results.exists() else []
        assert len(runs) == 1, runs
        return runs[0]
