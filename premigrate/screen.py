"""The guest's screen, seen from outside: QMP ``screendump`` frames (PPM) turned into PNG, and
the text of a VGA text-mode screen read from guest memory.

A guest with no serial console (most VMware VMs) still shows where its boot is on the screen:
the BIOS banner, the boot loader, the kernel's or initramfs' last words, a login prompt. The
PNG encoder is ``zlib`` + ``struct`` (a PNG is a signature and CRC-checked chunks: IHDR, IDAT
with filter byte 0 per row, IEND).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

VGA_TEXT_BASE = 0xB8000
VGA_COLS, VGA_ROWS = 80, 25
TEXT_MODE_SIZES = {(720, 400), (640, 400)}  # 80x25 cells of 9x16 or 8x16 pixels


class ScreenError(ValueError):
    """A frame that is not a binary PPM (P6) we can read."""


@dataclass(frozen=True)
class Frame:
    width: int
    height: int
    rgb: bytes  # width * height * 3

    @property
    def blank(self) -> bool:
        """Nothing drawn: every sampled pixel is black (a cursor alone does not count)."""
        step = max(3, (len(self.rgb) // 3 // 4096) * 3)
        lit = sum(1 for i in range(0, len(self.rgb) - 2, step) if self.rgb[i] | self.rgb[i + 1] | self.rgb[i + 2])
        return lit <= 2

    @property
    def text_mode(self) -> bool:
        return (self.width, self.height) in TEXT_MODE_SIZES


def read_ppm(data: bytes) -> Frame:
    """Parse a binary PPM (P6, maxval 255) as qemu's screendump writes it."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ScreenError("truncated PPM header")
        fields.append(data[start:pos])
    if fields[0] != b"P6":
        raise ScreenError(f"not a binary PPM (magic {fields[0][:4]!r})")
    try:
        width, height, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    except ValueError:
        raise ScreenError("bad PPM header") from None
    if maxval != 255 or not (0 < width <= 8192 and 0 < height <= 8192):
        raise ScreenError(f"unsupported PPM {width}x{height} maxval {maxval}")
    rgb = data[pos + 1 : pos + 1 + width * height * 3]
    if len(rgb) != width * height * 3:
        raise ScreenError("truncated PPM pixels")
    return Frame(width, height, rgb)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(frame: Frame) -> bytes:
    """An 8-bit RGB PNG of ``frame``."""
    row = frame.width * 3
    raw = b"".join(b"\0" + frame.rgb[y * row : (y + 1) * row] for y in range(frame.height))
    header = struct.pack(">IIBBBBB", frame.width, frame.height, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def ppm_to_png(ppm: Path, png: Path) -> Frame:
    frame = read_ppm(ppm.read_bytes())
    png.write_bytes(png_bytes(frame))
    return frame


_XP_LINE = re.compile(r"^[0-9a-fA-F]+:((?:\s+0x[0-9a-fA-F]{4})+)\s*$", re.M)


def parse_vga_text(xp_output: str) -> str:
    """The 80x25 characters of a VGA text screen from HMP ``xp /2000hx 0xb8000`` output (each
    16-bit cell is character | attribute << 8), trailing blanks and empty last lines removed."""
    cells: list[int] = []
    for match in _XP_LINE.finditer(xp_output):
        cells += [int(word, 16) for word in match.group(1).split()]
    chars = [chr(c & 0xFF) if 0x20 <= (c & 0xFF) < 0x7F else " " for c in cells]
    lines = ["".join(chars[r * VGA_COLS : (r + 1) * VGA_COLS]).rstrip() for r in range(len(chars) // VGA_COLS)]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def vga_text_command() -> str:
    """The HMP command that dumps the VGA text buffer (sent through QMP human-monitor-command)."""
    return f"xp /{VGA_COLS * VGA_ROWS}hx {VGA_TEXT_BASE:#x}"
