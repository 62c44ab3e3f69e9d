"""The guest workloads for a stock cloud image (Fedora, Debian, Ubuntu), shipped by cloud-init.

The micro image carries ``vp-memcheck`` and ``vp-dirty`` in its initramfs (``micro.py``); a stock
cloud image has neither, and no compiler. ``workload_files`` gives the cloud-init ``write_files``
entries that install them at first boot, so the migration suite's memory workloads run on a
cloud image with nothing but cloud-init:

- ``/usr/local/bin/vp-memcheck``: the static binary ``memcheck.build_binary`` compiles (musl-gcc,
  else gcc), gzipped and base64-encoded (``memcheck.cloud_init_write_files``), mode 0755;
- ``/usr/local/bin/vp-dirty``: ``vp-dirty.sh`` as the micro guest has it, with one line in front:
  the login user of a cloud image is not root, and ``/run`` (where vp-dirty writes its pid
  file, which the suite reads) is root's, so the script makes that one file its user's with
  ``sudo -n`` (cloud-init gives the user passwordless sudo) and runs as the user, whose process
  the suite's ``kill -0`` can see;
- ``/usr/local/bin/usleep``: busybox's ``usleep`` (vp-dirty and the suite's wait loop call it;
  Debian and Fedora have no ``usleep``) as a shell function of ``sleep`` with a fraction.

Nothing here reads outside the package: the script is package data beside this module and the
binary is built from ``vp-memcheck.c`` into the cache (``<cache>/memcheck``).
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path

from virtproof.lab.images import memcheck
from virtproof.lab.images.debs import PackageError

log = logging.getLogger("virtproof.lab.images")

DIRTY_PATH = "/usr/local/bin/vp-dirty"
USLEEP_PATH = "/usr/local/bin/usleep"
DIRTY_PID = "/run/vp-dirty.pid"
# Inserted after vp-dirty.sh's shebang: the pid file becomes the login user's (see the module doc).
DIRTY_PREAMBLE = (
    "# stock cloud image (cloud-init write_files): the login user is not root and /run is root's\n"
    f'[ -w /run ] || [ -w {DIRTY_PID} ] || sudo -n install -m 0644 -o "$(id -u)" /dev/null {DIRTY_PID}\n'
)
USLEEP = (
    "#!/bin/sh\n"
    "# usleep MICROSECONDS, as busybox has it (a stock cloud image does not): sleep takes a fraction\n"
    "us=${1:-1}\n"
    'exec sleep "$((us / 1000000)).$(printf %06d $((us % 1000000)))"\n'
)


def dirty_script() -> str:
    """vp-dirty as shipped to a cloud image: the micro guest's script with the preamble."""
    text = resources.files(__package__).joinpath("vp-dirty.sh").read_text(encoding="utf-8")
    shebang, _, body = text.partition("\n")
    if not shebang.startswith("#!"):
        raise ValueError("vp-dirty.sh does not start with a #! line")
    return f"{shebang}\n{DIRTY_PREAMBLE}{body}"


def _script(path: str, content: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": "0755", "content": content}


def script_files() -> tuple[dict[str, str], ...]:
    """The two shell files (no build needed)."""
    return (_script(DIRTY_PATH, dirty_script()), _script(USLEEP_PATH, USLEEP))


@functools.cache
def workload_files(cache_root: Path | None = None) -> tuple[dict[str, str], ...]:
    """Every ``write_files`` entry (vp-memcheck, vp-dirty, usleep); built once per process.

    Without a C compiler on this host, vp-memcheck is left out (logged): the boot and plain
    migration suites do not need it, and the memcheck workload then says it is missing."""
    try:
        binary = memcheck.cloud_init_write_files(cache_root=cache_root)
    except PackageError as exc:
        log.warning("cloud-init guests get no vp-memcheck: %s", exc)
        return script_files()
    return (binary, *script_files())


def placeholder_files() -> tuple[dict[str, str], ...]:
    """The entries as ``virtproof lab plan`` shows them: the binary's content elided (it is
    compiled at run time, and 50-450 KB of base64 would drown the plan)."""
    binary = {"path": memcheck.CLOUD_GUEST_PATH, "owner": "root:root", "permissions": "0755",
              "encoding": "gz+b64", "content": "<vp-memcheck: static binary compiled at run time, gzip+base64>"}
    return (binary, *script_files())
