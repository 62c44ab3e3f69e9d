"""List the files of an initramfs image without unpacking it to disk.

An initramfs is a sequence of cpio (``newc``) archives, some uncompressed (early microcode),
the rest compressed (gzip, xz, zstd, lz4, bzip2). We walk the segments and collect names.
"""

from __future__ import annotations

import bz2
import lzma
import subprocess
import threading
import zlib

_NEWC = (b"070701", b"070702")
_HEADER = 110
# An initramfs comes from the guest, so it may be a decompression bomb: no segment may expand
# past this (a real one is tens of MiB).
MAX_UNPACKED = 512 * 1024 * 1024


class InitramfsError(ValueError):
    """The image is not an initramfs we can read."""


def _bounded(decompressor: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor, data: bytes) -> bytes:
    out = decompressor.decompress(data, MAX_UNPACKED + 1)
    if len(out) > MAX_UNPACKED:
        raise InitramfsError(f"initramfs segment expands past {MAX_UNPACKED // 1024**2} MiB (a decompression bomb?)")
    return out


def _decompress(data: bytes) -> bytes:
    try:
        if data.startswith(b"\x1f\x8b"):
            return _bounded(zlib.decompressobj(16 + zlib.MAX_WBITS), data)
        if data.startswith(b"\xfd7zXZ") or data.startswith(b"\x5d\x00\x00"):
            return _bounded(lzma.LZMADecompressor(), data)
        if data.startswith(b"BZh"):
            return _bounded(bz2.BZ2Decompressor(), data)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise InitramfsError(f"corrupt compressed initramfs segment: {exc}") from None
    for magic, tool in ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"), (b"\x04\x22\x4d\x18", "lz4")):
        if data.startswith(magic):
            return _external(tool, data)
    raise InitramfsError(f"unknown initramfs segment (magic {data[:6].hex()})")


def _external(tool: str, data: bytes) -> bytes:
    """Decompress with ``tool -dc``, reading at most ``MAX_UNPACKED`` bytes of its output."""
    try:
        proc = subprocess.Popen([tool, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise InitramfsError(f"{tool} is needed to read this initramfs (apt-get install {tool})") from exc

    def feed() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert proc.stdout is not None
    out = proc.stdout.read(MAX_UNPACKED + 1)
    proc.kill()
    proc.wait()
    writer.join(5)
    proc.stdout.close()
    if len(out) > MAX_UNPACKED:
        raise InitramfsError(f"initramfs segment expands past {MAX_UNPACKED // 1024**2} MiB (a decompression bomb?)")
    if not out:
        raise InitramfsError(f"{tool} could not decompress the initramfs")
    return out


def _cpio_names(data: bytes, pos: int, names: list[str]) -> int:
    """Parse one newc archive at ``pos``; return the offset after its trailer."""
    while True:
        if data[pos : pos + 6] not in _NEWC:
            raise InitramfsError(f"bad cpio header at offset {pos}")
        header = data[pos : pos + _HEADER]
        try:
            size = int(header[54:62], 16)
            namesize = int(header[94:102], 16)
        except ValueError:
            raise InitramfsError(f"bad cpio header at offset {pos}") from None
        name = data[pos + _HEADER : pos + _HEADER + namesize - 1].decode("utf-8", "replace")
        pos += _HEADER + namesize
        pos = (pos + 3) & ~3
        pos += size
        pos = (pos + 3) & ~3
        if name == "TRAILER!!!":
            return pos
        names.append(name.removeprefix("./").removeprefix("/"))


def list_initramfs(data: bytes) -> list[str]:
    """All member names of all segments (decompressing nested segments)."""
    names: list[str] = []
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:
            pos += 1
        if pos >= len(data):
            break
        if data[pos : pos + 6] in _NEWC:
            pos = _cpio_names(data, pos, names)
            continue
        inner = _decompress(data[pos:])
        names.extend(list_initramfs(inner))
        break
    return names


def module_names(members: list[str]) -> set[str]:
    """Kernel module names (``virtio_blk``) of ``.ko`` / ``.ko.xz`` / ``.ko.zst`` members."""
    found: set[str] = set()
    for member in members:
        base = member.rsplit("/", 1)[-1]
        for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
            if base.endswith(ext):
                found.add(normalize_module(base[: -len(ext)]))
    return found


def normalize_module(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike; use ``_``."""
    return name.replace("-", "_")
