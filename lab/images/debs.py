"""Debian packages fetched with ``apt-get download`` into a cache, never installed on the host."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PackageError(RuntimeError):
    """A package could not be resolved, downloaded or unpacked."""


@dataclass(frozen=True)
class Deb:
    name: str
    path: Path
    sha256: str


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError as exc:
        raise PackageError(f"{argv[0]} not found: building images needs a Debian or Ubuntu host") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise PackageError(f"{' '.join(argv[:3])}... failed: {detail[0]}")
    return proc.stdout


def resolve_dependency(metapackage: str, prefix: str) -> str:
    """The concrete package a metapackage depends on (``linux-image-cloud-amd64`` -> the ABI one)."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", metapackage])
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(\S+)", line)
        if match and match.group(1).startswith(prefix):
            return match.group(1)
    raise PackageError(f"{metapackage} depends on no {prefix}* package (run apt-get update?)")


def package_version(name: str) -> str:
    out = _run(["apt-cache", "policy", name])
    match = re.search(r"Candidate:\s*(\S+)", out)
    if not match or match.group(1) == "(none)":
        raise PackageError(f"package {name} is not available from apt (run apt-get update?)")
    return match.group(1)


class DebCache:
    """Downloads .deb files once into ``<cache>/debs`` and unpacks them on demand."""

    def __init__(self, cache_root: Path) -> None:
        self.dir = cache_root / "debs"

    def fetch(self, names: list[str]) -> list[Deb]:
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = {name: package_version(name) for name in names}
        missing = [n for n, v in wanted.items() if self._find(n, v) is None]
        if missing:
            _run(["apt-get", "download", "-q", *missing], cwd=self.dir)
        debs = []
        for name, version in wanted.items():
            path = self._find(name, version)
            if path is None:
                raise PackageError(f"apt-get download {name} produced no .deb")
            debs.append(Deb(name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
        return debs

    def _find(self, name: str, version: str) -> Path | None:
        # apt names files NAME_VERSION_ARCH.deb with ':' in the version escaped as %3a.
        escaped = version.replace(":", "%3a")
        for candidate in self.dir.glob(f"{name}_*.deb"):
            if candidate.name.startswith(f"{name}_{escaped}_"):
                return candidate
        return None


def unpack(debs: list[Deb], dest: Path) -> None:
    """Unpack the packages' data into ``dest`` (dpkg-deb -x), replacing what was there."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb.path), str(dest)])
