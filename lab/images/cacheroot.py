"""Where virtproof caches what it builds on this host (guest images, vp-memcheck, the control
plane, fixtures): ``$VIRTPROOF_CACHE``, else ``$XDG_CACHE_HOME/virtproof``, else
``~/.cache/virtproof``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root_default() -> Path:
    if os.environ.get("VIRTPROOF_CACHE"):
        return Path(os.environ["VIRTPROOF_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "virtproof"
