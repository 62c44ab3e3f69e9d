"""The boot proof's device model comes from the generated VirtualMachine; where a boot stopped is
told from outside (serial, screen, SSH); the last screen is kept as a PNG. The real-qemu tests
boot disks that cannot boot, under SeaBIOS and under OVMF, and read where they stopped."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from virtproof.lab.kubevirt.schema import load_schemas
from virtproof.lab.qemu.process import build_argv
from virtproof.premigrate import milestones as ms
from virtproof.premigrate.bootproof import boot_and_follow
from virtproof.premigrate.devicemodel import DeviceModelError, device_model, qemu_config
from virtproof.premigrate.manifests import GIB, VmShape, build_manifests, virtual_machine
from virtproof.premigrate.screen import Frame, parse_vga_text, png_bytes, read_ppm


def _png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Decode our own PNG (8-bit RGB, filter 0) back, checking every chunk's CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    width, height = size
    rows = [raw[y * (width * 3 + 1) : (y + 1) * (width * 3 + 1)] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, height, b"".join(r[1:] for r in rows)


def test_ppm_to_png_round_trip() -> None:
    pixels = bytes((x * 7 + y * 3) % 256 for y in range(5) for x in range(12))
    ppm = b"P6\n# a comment\n4 5\n255\n" + pixels
    frame = read_ppm(ppm)
    assert (frame.width, frame.height, frame.text_mode, frame.blank) == (4, 5, False, False)
    assert _png_pixels(png_bytes(frame)) == (4, 5, pixels)
    assert Frame(720, 400, bytes(720 * 400 * 3)).blank and Frame(720, 400, b"").text_mode
    with pytest.raises(ValueError):
        read_ppm(b"P5\n1 1\n255\n\0")
    with pytest.raises(ValueError):
        read_ppm(b"P6\n4 5\n255\n" + pixels[:10])


def test_vga_text_from_monitor_dump() -> None:
    cells = [0x0700 | ord(c) for c in "SeaBIOS (version 1.16)".ljust(80)] + [0x0720] * 80
    cells += [0x0700 | ord(c) for c in "No bootable device.".ljust(80)] + [0x0720] * (80 * 22)
    lines = [
        f"{0xB8000 + i * 2:016x}: " + " ".join(f"0x{c:04x}" for c in cells[i : i + 8]) for i in range(0, 2000, 8)
    ]
    assert parse_vga_text("\n".join(lines)) == "SeaBIOS (version 1.16)\n\nNo bootable device."


def test_stages_from_what_was_seen() -> None:
    assert ms.stages(ms.Seen()) == []
    assert ms.stages(ms.Seen(screen_text="SeaBIOS (version 1.16)\nBooting from Hard Disk...")) == ["firmware"]
    grub = ms.Seen(frame_drawn=True, graphics_frame=True)
    assert ms.stages(grub) == ["firmware", "bootloader"]
    alert = ms.Seen(
        frame_drawn=True,
        graphics_frame=True,
        screen_text="Loading, please wait...\nGave up waiting for root file system device.\n"
        "ALERT!  /dev/mapper/vg0-root does not exist.  Dropping to a shell!\n(initramfs)",
    )
    assert ms.stages(alert) == ["firmware", "bootloader", "kernel"]
    assert ms.failure(alert) == "ALERT!  /dev/mapper/vg0-root does not exist"
    stopped = ms.where_stopped(alert, False)
    assert stopped.startswith("stopped in kernel (never reached userspace): ALERT!")
    full = ms.Seen(console="Linux version 6.1\nWelcome to Debian GNU/Linux 12!\n", network=True, ssh=True)
    assert ms.stages(full) == list(ms.STAGES) and ms.where_stopped(full, True) == "reached sshd"
    uefi = ms.Seen(console="BdsDxe: failed to load Boot0001 \"UEFI QEMU HARDDISK\"\nBdsDxe: No bootable option")
    assert ms.stages(uefi) == ["firmware"] and "BdsDxe: failed to load" in (ms.failure(uefi) or "")


def _vm(**shape: object) -> dict[str, object]:
    base: dict[str, object] = dict(name="web01", cpus=2, memory_mib=1024, firmware="bios", disk_bytes=GIB)
    base.update(shape)
    return virtual_machine(VmShape(**base))  # type: ignore[arg-type]


def test_device_model_is_read_from_the_generated_vm(tmp_path: Path) -> None:
    schemas = load_schemas()
    _, vm = build_manifests(VmShape("web01", 2, 1024, "uefi", GIB, secure_boot=True, mac="00:50:56:8a:3c:01"), schemas)
    model = device_model(vm)
    assert (model.machine, model.firmware, model.secure_boot, model.video) == ("q35", "uefi", True, "VGA")
    assert (model.disk_bus, model.nic_model, model.mac, model.cpus, model.memory_mib) == (
        "virtio", "virtio", "00:50:56:8a:3c:01", 2, 1024)  # fmt: skip
    assert vm["spec"]["template"]["spec"]["domain"]["features"] == {"smm": {"enabled": True}}
    cfg = qemu_config(model, tmp_path / "d.qcow2", "qcow2", tmp_path / "boot", name="vp-t", ssh_port=2222)
    argv = " ".join(build_argv(cfg))
    assert "-machine q35,smm=on" in argv and "driver=cfi.pflash01,property=secure,value=on" in argv
    assert "OVMF_CODE_4M.secboot.fd" in argv and f"file={tmp_path / 'boot' / 'OVMF_VARS.fd'}" in argv
    assert (tmp_path / "boot" / "OVMF_VARS.fd").stat().st_size > 0  # a copy per boot
    assert "-device VGA" in argv and "virtio-balloon-pci" in argv and "virtio-rng-pci" in argv
    assert "virtio-blk-pci,drive=disk0" in argv and "format=qcow2" in argv and "mac=00:50:56:8a:3c:01" in argv
    bios = device_model(_vm(bus="scsi"))
    assert bios.firmware == "bios" and bios.disk_bus == "scsi" and not bios.secure_boot
    headless = _vm()
    headless["spec"]["template"]["spec"]["domain"]["devices"]["autoattachGraphicsDevice"] = False  # type: ignore[index]
    assert device_model(headless).video is None
    odd = _vm()
    odd["spec"]["template"]["spec"]["domain"]["machine"] = {"type": "pc-i440fx-2.12"}  # type: ignore[index]
    with pytest.raises(DeviceModelError, match="q35 only"):
        device_model(odd)


@pytest.mark.qemu
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_disk_that_cannot_boot_says_where_it_stopped(tmp_path: Path, firmware: str) -> None:
    """A disk with nothing on it: the firmware runs and finds no boot loader, which the proof
    reads from the screen (SeaBIOS, text mode) or the serial console (OVMF), with a PNG."""
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    proof = boot_and_follow(
        disk, "raw", tmp_path, vm=_vm(firmware=firmware), name=f"vpboot-blank-{firmware}", timeout_s=150,
        evidence_dir=tmp_path / "evidence",
    )  # fmt: skip
    assert not proof.booted and proof.stages == ("firmware",), (proof.stopped, proof.console_tail, proof.screen_text)
    assert proof.stopped.startswith("stopped in firmware (never reached bootloader)"), proof.stopped
    if firmware == "bios":
        assert "No bootable device" in proof.stopped and "No bootable device" in proof.screen_text
        assert "OVMF" not in " ".join(proof.qemu_argv)
    else:
        assert "BdsDxe" in proof.console_tail and "OVMF_CODE_4M.fd" in " ".join(proof.qemu_argv)
    assert proof.screen_png and Path(proof.screen_png).read_bytes().startswith(b"\x89PNG")
    width, height, _ = _png_pixels(Path(proof.screen_png).read_bytes())
    assert width >= 640 and height >= 400
    assert not proof.timed_out


def test_the_lab_argv_is_unchanged_by_the_boot_proof_fields() -> None:
    """The launcher is shared with the qemu lab: a config that sets none of the boot proof's
    fields (firmware, video model, balloon) gives exactly the lab's command line of before."""
    from virtproof.lab.qemu.process import QemuConfig

    argv = build_argv(QemuConfig(guest_name="vp-x-vm0", directory=Path("/s")))
    assert argv == [
        "qemu-system-x86_64", "-name", "guest=vp-x-vm0,debug-threads=on", "-machine", "q35",
        "-accel", "tcg,tb-size=64", "-cpu", "max", "-smp", "1", "-m", "256", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-chardev", "file,id=console,path=/s/console.log",
        "-serial", "chardev:console", "-qmp", "unix:/s/qmp.sock,server=on,wait=off", "-pidfile", "/s/qemu.pid",
        "-S", "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip
    with_vga = build_argv(QemuConfig(guest_name="g", directory=Path("/s"), graphics=True))
    assert with_vga.count("-device") == 2 and "VGA" in with_vga and not any("pflash" in a for a in with_vga)
