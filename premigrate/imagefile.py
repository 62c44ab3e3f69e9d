"""Facts about a source image file from ``qemu-img info`` (no guest involved), and its hash."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

DISK_FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")
FORMAT_NAMES = {"vpc": "VHD", "vhdx": "VHDX", "vmdk": "VMDK", "qcow2": "qcow2", "raw": "raw"}


class BadSource(ValueError):
    """The source is missing, unreadable or of a format we do not take (a usage error)."""


@dataclass(frozen=True)
class ImageFacts:
    path: Path
    format: str  # qemu's name: raw qcow2 vmdk vpc vhdx
    virtual_size: int
    actual_size: int
    backing_chain: tuple[str, ...]
    encrypted: bool
    subformat: str | None  # VMDK create-type (streamOptimized, monolithicSparse, ...)

    @property
    def stream_optimized(self) -> bool:
        return self.subformat == "streamOptimized"


def _looks_like_disk(path: Path) -> bool:
    """A raw file we accept: an MBR/GPT signature or an ext/XFS/NTFS file system at the start."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return True
    return head[:4] == b"XFSB" or head[1080:1082] == b"\x53\xef" or head[3:7] == b"NTFS"


def image_facts(path: Path) -> ImageFacts:
    if not path.is_file():
        raise BadSource(f"{path}: no such file")
    try:
        proc = subprocess.run(
            ["qemu-img", "info", "--output=json", "--backing-chain", "--force-share", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError as exc:
        raise BadSource("qemu-img is not installed (apt-get install qemu-utils)") from exc
    if proc.returncode != 0:
        raise BadSource(f"{path}: not a disk image qemu-img can read: {proc.stderr.strip().splitlines()[-1:]}")
    chain = json.loads(proc.stdout)
    top = chain[0]
    fmt = str(top.get("format"))
    if fmt not in DISK_FORMATS:
        raise BadSource(f"{path}: unsupported disk format {fmt!r} (want raw, qcow2, VMDK, VHD, VHDX, OVA)")
    if fmt == "raw" and not _looks_like_disk(path):
        raise BadSource(f"{path}: unknown format: not a disk image (no partition table or file system)")
    specific = (top.get("format-specific") or {}).get("data") or {}
    return ImageFacts(
        path=path,
        format=fmt,
        virtual_size=int(top.get("virtual-size", 0)),
        actual_size=int(top.get("actual-size", 0)),
        backing_chain=tuple(str(layer.get("filename")) for layer in chain[1:]),
        encrypted=bool(top.get("encrypted")),
        subformat=specific.get("create-type"),
    )


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
