"""Where labs keep their state on this host: a private directory, never a guessable /tmp path.

``$VIRTPROOF_STATE`` if set, else ``/run/virtproof`` for root, else ``$XDG_RUNTIME_DIR/virtproof``
(or ``/tmp/virtproof-<uid>`` without one). The directory is created mode 0700 and must be a real
directory (not a symlink) owned by the current user that no one else can write to; otherwise it
is refused (StateDirError, exit code 3), so another local user cannot plant sockets, pid files or
keys for a root run to trust. One that others can only read is tightened to 0700.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from virtproof.core.errors import LabUnavailable


class StateDirError(LabUnavailable, RuntimeError):
    """The state directory is not safe to use (wrong owner, a symlink, not a directory) or cannot
    be made: a problem of this host, so exit code 3. Also a RuntimeError, which the code that
    brings labs up already reports as "the lab could not come up"."""


def default_state_root() -> Path:
    explicit = os.environ.get("VIRTPROOF_STATE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/virtproof")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "virtproof" if runtime else Path(f"/tmp/virtproof-{os.geteuid()}")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) mode 0700, or check an existing one; StateDirError if unsafe."""
    try:
        if not path.is_symlink():  # a dangling one would make mkdir say only "File exists"
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise StateDirError(f"state directory {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state directory {path}: not a directory (a symlink or a file); remove it")
    if info.st_uid != os.geteuid():
        raise StateDirError(f"state directory {path}: owned by uid {info.st_uid}, not by this user ({os.geteuid()})")
    if info.st_mode & 0o022:  # others could have planted files in it already
        raise StateDirError(f"state directory {path}: writable by group or others "
                            f"(mode {stat.S_IMODE(info.st_mode):04o}); remove it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours and only readable by others (an older virtproof made it): tighten it
    return path


def state_root() -> Path:
    """The state directory, created private on first use."""
    return ensure_private_dir(default_state_root())
