"""Facts about a source image file, read without trusting it, and its hash.

premigrate runs as root on disks someone else made, so an image is never allowed to make us
open another file of this host:

- the format is decided here from the file's own magic bytes, never by qemu's probing, and
  passed explicitly (``-f``) to every ``qemu-img`` call, to qemu's ``-drive format=`` and to
  libguestfs' ``add_drive(format=)``;
- ``qemu-img info`` runs with that format and without ``--backing-chain``: qemu-img opens the
  top image with ``BDRV_O_NO_BACKING`` then (qemu-img.c ``collect_image_info_list``), whereas
  ``--backing-chain`` opens each backing file to read its header, which is exactly what a
  hostile ``-b /etc/shadow`` wants. Any backing file or qcow2 external data file is refused;
- a VMDK text descriptor is parsed here before qemu sees it (qemu opens every extent it
  names, even for ``info``): only plain files beside the descriptor are taken;
- sizes are bounded (``MAX_VIRTUAL_BYTES``), and the hash skips holes, so a sparse bomb
  neither passes nor hangs us.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

DISK_FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")
FORMAT_NAMES = {"vpc": "VHD", "vhdx": "VHDX", "vmdk": "VMDK", "qcow2": "qcow2", "raw": "raw"}
# VMware's own limit for a virtual disk is 62 TB; nothing bigger is a real VM disk.
MAX_VIRTUAL_BYTES = 64 * 1024**4
_DESCRIPTOR_MAX = 64 * 1024
_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]*)"(?:\s+(\d+))?\s*$')


class BadSource(ValueError):
    """The source is missing, unreadable, hostile or of a format we do not take (exit 2, one line)."""


@dataclass(frozen=True)
class ImageFacts:
    path: Path
    format: str  # qemu's name: raw qcow2 vmdk vpc vhdx
    virtual_size: int
    actual_size: int
    backing_chain: tuple[str, ...]
    encrypted: bool
    subformat: str | None  # VMDK create-type (streamOptimized, monolithicSparse, ...)
    extents: tuple[Path, ...] = ()  # the data files of a VMDK descriptor (beside it)

    @property
    def stream_optimized(self) -> bool:
        return self.subformat == "streamOptimized"


def _looks_like_disk(head: bytes) -> bool:
    """A raw file we accept: an MBR/GPT signature or an ext/XFS/NTFS file system at the start."""
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return True
    return head[:4] == b"XFSB" or head[1080:1082] == b"\x53\xef" or head[3:7] == b"NTFS"


def _read_head(path: Path, size: int = 4096) -> tuple[bytes, bytes]:
    """The first ``size`` bytes and the last 512 (a fixed VHD keeps its footer there)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - 512))
            tail = fh.read(512)
    except OSError as exc:
        raise BadSource(f"{path}: cannot read: {exc.strerror}") from None
    return head, tail


def detect_format(path: Path) -> str:
    """qemu's format name for ``path`` from its magic bytes (never qemu's own probing)."""
    head, tail = _read_head(path)
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:4] in (b"KDMV", b"COWD") or head.lstrip().startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix" or tail[:8] == b"conectix":
        return "vpc"
    if head[:6] == b"LUKS\xba\xbe":
        raise BadSource(f"{path}: a LUKS-encrypted image: decrypt it first")
    for magic, name in ((b"QFI\xfe", "QED"), (b"<<< ", "VDI"), (b"WithoutFreeSpace", "Parallels")):
        if head.startswith(magic):
            raise BadSource(f"{path}: unsupported disk format {name} (want raw, qcow2, VMDK, VHD, VHDX, OVA)")
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise BadSource(f"{path}: a compressed file, not a disk image: decompress it first")
    if not _looks_like_disk(head):
        raise BadSource(f"{path}: unknown format: not a disk image (no partition table or file system)")
    return "raw"


def _descriptor_extents(path: Path) -> tuple[Path, ...]:
    """The extent files a VMDK text descriptor names, each checked to be a plain file beside it."""
    head, _ = _read_head(path, _DESCRIPTOR_MAX + 1)
    if not head.lstrip().startswith(b"# Disk DescriptorFile"):
        return ()  # a sparse/stream VMDK: the file is its own only extent
    if len(head) > _DESCRIPTOR_MAX or b"\0" in head:
        raise BadSource(f"{path}: a VMDK descriptor over {_DESCRIPTOR_MAX // 1024} KiB or with binary data")
    text = head.decode("utf-8", "replace")
    if re.search(r"^\s*parentFileNameHint\s*=", text, re.M):
        raise BadSource(f"{path}: refused: the VMDK names a parent (backing) file; flatten the chain first")
    extents: list[Path] = []
    for line in text.splitlines():
        match = _EXTENT.match(line)
        if not match:
            continue
        name = match.group(4)
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise BadSource(f"{path}: refused: VMDK extent {name!r} is not a file beside the descriptor")
        extent = path.parent / name
        try:
            st = extent.lstat()
        except OSError:
            raise BadSource(f"{path}: VMDK extent {name!r} does not exist") from None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise BadSource(f"{path}: refused: VMDK extent {name!r} is a link, device or hard-linked file")
        extents.append(extent)
    if not extents:
        raise BadSource(f"{path}: a VMDK descriptor with no extent")
    return tuple(extents)


def _qemu_img_info(path: Path, fmt: str) -> dict[str, object]:
    argv = ["qemu-img", "info", "-f", fmt, "--output=json", "--force-share", str(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        from virtproof.core.errors import LabUnavailable

        raise LabUnavailable("qemu-img is not installed (apt-get install qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise BadSource(f"{path}: qemu-img info did not answer within 60 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BadSource(f"{path}: not a {FORMAT_NAMES[fmt]} image qemu-img can read: {last}")
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BadSource(f"{path}: qemu-img info gave no JSON") from None
    if not isinstance(info, dict):
        raise BadSource(f"{path}: qemu-img info gave no image")
    return info


def _integrity(path: Path, fmt: str) -> None:
    """``qemu-img check`` of the image's metadata: a truncated or corrupt qcow2 reads as zeros where
    its clusters are missing (qemu-img convert succeeds), so it is refused here instead."""
    if fmt not in ("qcow2", "vhdx"):
        return  # VMDK: a truncated grain fails the conversion itself; raw and VHD have no metadata
    argv = ["qemu-img", "check", "-f", fmt, "--output=json", "--force-share", str(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    except subprocess.TimeoutExpired:
        raise BadSource(f"{path}: qemu-img check did not finish within 300 s") from None
    if proc.returncode in (0, 3):  # 3: leaked clusters only, harmless for a read
        return
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    corruptions = report.get("corruptions", "?") if isinstance(report, dict) else "?"
    raise BadSource(f"{path}: a truncated or corrupt {FORMAT_NAMES[fmt]} image ({corruptions} corruptions found)")


def image_facts(path: Path) -> ImageFacts:
    if not path.is_file():
        raise BadSource(f"{path}: no such file")
    fmt = detect_format(path)
    extents = _descriptor_extents(path) if fmt == "vmdk" else ()
    info = _qemu_img_info(path, fmt)
    if str(info.get("format")) != fmt:
        raise BadSource(f"{path}: qemu-img reads it as {info.get('format')!r}, not {fmt!r}")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        raise BadSource(
            f"{path}: refused: it has a backing file ({backing}); virtproof opens no file an image names. "
            "Flatten it first: qemu-img convert -O qcow2 (after checking the chain yourself)"
        )
    specific_any = info.get("format-specific")
    specific = specific_any.get("data") if isinstance(specific_any, dict) else None
    specific = specific if isinstance(specific, dict) else {}
    if specific.get("data-file"):
        raise BadSource(f"{path}: refused: a qcow2 with an external data file ({specific['data-file']})")
    virtual = int(str(info.get("virtual-size", 0)))
    if virtual > MAX_VIRTUAL_BYTES:
        raise BadSource(
            f"{path}: refused: virtual size {virtual / 1024**5:.1f} PiB is more than any VM disk "
            f"({MAX_VIRTUAL_BYTES // 1024**4} TiB at most)"
        )
    if virtual <= 0:
        raise BadSource(f"{path}: virtual size {virtual}: an empty or broken image")
    _integrity(path, fmt)
    subformat = specific.get("create-type")
    return ImageFacts(
        path=path,
        format=fmt,
        virtual_size=virtual,
        actual_size=int(str(info.get("actual-size", 0))),
        backing_chain=(),
        encrypted=bool(info.get("encrypted")),
        subformat=str(subformat) if subformat else None,
        extents=extents,
    )


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    """A digest of the file's content that does not read its holes, so a sparse 60 TiB raw hashes
    in the time its data takes. Content, not layout: the file is cut into ``chunk``-sized pieces
    and each piece that is not all zeros (stored or a hole) goes in with its offset, so the same
    bytes give the same digest however sparsely they are stored."""
    digest = hashlib.sha256()
    zeros = bytes(chunk)
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        digest.update(size.to_bytes(8, "little"))
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole is left
                data = pos  # no SEEK_DATA here: read everything
            pos = data - data % chunk
            block = os.pread(fd, chunk, pos)
            if not block:
                break
            if block != zeros[: len(block)]:
                digest.update(pos.to_bytes(8, "little"))
                digest.update(block)
            pos += chunk
    return digest.hexdigest()
