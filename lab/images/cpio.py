"""A deterministic cpio (newc) writer for initramfs images: sorted, mtime 0, owned by root."""

from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeviceNode:
    """A character device to put into the archive without mknod on the host."""

    path: str
    major: int
    minor: int
    mode: int = 0o600


def _header(fh: gzip.GzipFile, ino: int, mode: int, size: int, name: str, rmajor: int = 0, rminor: int = 0) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, rmajor, rminor, len(encoded), 0)
    fh.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
    fh.write(encoded)
    fh.write(b"\0" * ((4 - (110 + len(encoded)) % 4) % 4))


def _pad(fh: gzip.GzipFile, size: int) -> None:
    fh.write(b"\0" * ((4 - size % 4) % 4))


def write_cpio(root: Path, out: Path, devices: tuple[DeviceNode, ...] = ()) -> None:
    """Pack the tree below ``root`` (plus ``devices``) into gzip-compressed newc ``out``."""
    entries: list[Path] = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=6) as fh:
        ino = 1
        for path in entries:
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).encode()
                _header(fh, ino, stat.S_IFLNK | 0o777, len(target), rel)
                fh.write(target)
                _pad(fh, len(target))
            elif stat.S_ISDIR(st.st_mode):
                _header(fh, ino, stat.S_IFDIR | perm, 0, rel)
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
                _header(fh, ino, stat.S_IFREG | perm, len(data), rel)
                fh.write(data)
                _pad(fh, len(data))
            ino += 1
        for dev in sorted(devices, key=lambda d: d.path):
            _header(fh, ino, stat.S_IFCHR | dev.mode, 0, dev.path.lstrip("/"), dev.major, dev.minor)
            ino += 1
        _header(fh, 0, 0, 0, "TRAILER!!!")
    os.replace(tmp, out)
