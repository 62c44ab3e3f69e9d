"""ruff over the tree and mypy --strict over the whole virtproof package (scripts/typecheck)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean(project_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=project_root, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_strict_is_clean(project_root: Path) -> None:
    proc = subprocess.run([sys.executable, str(project_root / "scripts" / "typecheck")], cwd=project_root,
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
