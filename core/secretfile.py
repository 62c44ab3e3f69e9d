"""Writing secrets (private keys, kubeconfigs, tokens): created with O_EXCL and mode 0600 before
any byte is written, never through a symlink, never by truncating a file someone else made."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, data: bytes, *, replace: bool = False) -> Path:
    """Create ``path`` (mode 0600) holding ``data``. With ``replace``, a file already there is
    removed first (unlinked, so a symlink planted at ``path`` is removed, not followed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path
