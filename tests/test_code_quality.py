"""ruff over the tree and mypy --strict over lab/, reports/ and scenarios/ (pyproject's settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean(project_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=project_root, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_strict_is_clean(project_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=project_root, capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
