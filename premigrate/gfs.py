"""One place that opens libguestfs handles, with the settings this kind of host needs.

libguestfs must run its appliance with the ``direct`` backend and under TCG here
(``force_tcg``): without it qemu aborts at once on hosts where KVM does not run guests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from virtproof.core.errors import LabUnavailable


class GuestfsUnavailable(LabUnavailable):
    """The python ``guestfs`` binding cannot be imported (see scripts/link-guestfs): a host problem."""


def guestfs_environment() -> None:
    """Set the environment libguestfs needs here (idempotent; the caller's values win)."""
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")


def _module() -> Any:
    guestfs_environment()
    try:
        import guestfs  # Debian's python3-guestfs, linked into the venv by scripts/link-guestfs
    except ImportError as exc:
        raise GuestfsUnavailable(
            "python guestfs binding not importable: apt-get install python3-guestfs and run scripts/link-guestfs"
        ) from exc
    return guestfs


@contextmanager
def open_guestfs(drives: Sequence[tuple[Path, str, bool]], memsize_mib: int = 768) -> Iterator[Any]:
    """A launched handle with ``drives`` as (path, format, readonly); closed on exit."""
    guestfs = _module()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_memsize(memsize_mib)
        for path, fmt, readonly in drives:
            g.add_drive_opts(str(path), format=fmt, readonly=readonly)
        g.launch()
        yield g
    finally:
        try:
            g.shutdown()
        finally:
            g.close()
