"""vp-memcheck, the guest memory-integrity checker: built here from its C source, shipped in guests.

``vp-memcheck.c`` (beside this module) is compiled on the host into a static x86_64 binary (no
libc in the guest is assumed, no compiler is needed there): ``musl-gcc -static`` when Debian's
``musl-tools`` is installed (about 75 KiB), else ``gcc -static`` with glibc (about 800 KiB). The
binary is cached under ``<cache>/memcheck/`` by the hash of its source, the compiler and its
flags. The micro image carries it as ``/usr/bin/vp-memcheck`` (``micro.py``); a stock cloud image
gets it through cloud-init ``write_files`` (``cloud_init_write_files``).

In the guest, ``vp-memcheck run -m MIB -r MIBPS`` fills a region of /dev/shm with a pattern
derived from (page, generation), keeps rewriting it at the requested rate, and on ``verify``
checks every page and reports the bad ones as JSON (see the C source for the fields);
``corrupt`` damages a page behind the workload's back, to prove the detector works.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from virtproof.lab.images.cacheroot import cache_root_default
from virtproof.lab.images.debs import PackageError

SOURCE = "vp-memcheck.c"
GUEST_PATH = "/usr/bin/vp-memcheck"  # in the micro guest
CLOUD_GUEST_PATH = "/usr/local/bin/vp-memcheck"  # on a stock cloud image (cloud-init write_files)
FLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-std=gnu11")
HERE = resources.files(__package__)


@dataclass(frozen=True)
class Compiler:
    """The C compiler that builds the static binary, and what identifies its output."""

    path: str
    identity: str  # the compiler's name and version line: part of the binary's cache key


def source_bytes() -> bytes:
    return HERE.joinpath(SOURCE).read_bytes()


def find_compiler() -> Compiler:
    """musl-gcc if installed (small static binaries), else gcc (glibc's static libc); else PackageError."""
    for name in ("musl-gcc", "gcc"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        first = (out.stdout.splitlines() or ["?"])[0]
        return Compiler(path, f"{name}: {first}")
    raise PackageError("vp-memcheck needs a C compiler on this host: apt-get install musl-tools (or gcc)")


def binary_key(compiler: Compiler) -> str:
    """The cache key of the binary: its source, the compiler and the flags."""
    h = hashlib.sha256()
    h.update(source_bytes())
    h.update(f"\n{compiler.identity}\n{' '.join(FLAGS)}\n".encode())
    return h.hexdigest()


def build_binary(cache_root: Path, compiler: Compiler | None = None) -> Path:
    """The static vp-memcheck binary for this source and compiler, compiled once and cached."""
    compiler = compiler or find_compiler()
    key = binary_key(compiler)
    directory = cache_root / "memcheck"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"vp-memcheck-{key[:16]}"
    if target.exists():
        return target
    with open(directory / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="vp-memcheck-", dir=directory) as tmp:
            src = Path(tmp) / SOURCE
            src.write_bytes(source_bytes())
            out = Path(tmp) / "vp-memcheck"
            proc = subprocess.run(
                [compiler.path, *FLAGS, "-o", str(out), str(src)], capture_output=True, text=True, timeout=300,
                check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise PackageError(f"compiling vp-memcheck with {compiler.path} failed: {proc.stderr.strip()[-800:]}")
            os.chmod(out, 0o755)
            os.replace(out, target)
    return target


def cloud_init_write_files(binary: Path | None = None, cache_root: Path | None = None) -> dict[str, str]:
    """The cloud-init ``write_files`` entry that installs vp-memcheck on a stock cloud image.

    The static binary, gzipped and base64-encoded (``encoding: gz+b64``), written to
    /usr/local/bin/vp-memcheck mode 0755. Add it to the user-data's ``write_files`` list. The entry
    is about 52 KB (musl build; about 450 KB with glibc): more than the 2048 bytes KubeVirt's
    admission webhook allows inline (``cloudInitUserMaxLen``), so on KubeVirt the user-data goes in a
    Secret (``cloudInitNoCloud.secretRef``, Secrets hold up to 1 MiB).
    """
    if binary is None:
        binary = build_binary(cache_root or cache_root_default())
    packed = gzip.compress(binary.read_bytes(), compresslevel=9, mtime=0)
    return {
        "path": CLOUD_GUEST_PATH,
        "owner": "root:root",
        "permissions": "0755",
        "encoding": "gz+b64",
        "content": base64.b64encode(packed).decode("ascii"),
    }
