"""Prove a converted disk boots on the devices the target gives a VM, by booting it under qemu.

The devices are read from the VirtualMachine object virtproof generates (``devicemodel``): q35,
SeaBIOS or OVMF (with a fresh copy of the variable store per boot), the VGA device KubeVirt
attaches, the disk and NIC buses, virtio-rng, the memory balloon, each behind its own PCIe root
port, started by the lab's own qemu launcher (``virtproof.lab.qemu.process``), TCG,
``snapshot=on``. qemu is always stopped by us (a converted guest may hang at poweroff, and
virt-v2v's first-boot scripts retry apt without a network).

Milestones are taken from outside the guest too (``milestones``): the serial console when the
guest writes to one, the screen when it does not (QMP ``screendump`` frames, and the text of a
VGA text-mode screen read from guest memory), the boot probe's lines, the SSH banner from the
host. A failure says where the boot stopped, and the last screen is kept as a PNG.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtproof.core.ports import free_port
from virtproof.lab.qemu.process import QemuProcess, die_with_parent, kill_all_started
from virtproof.lab.qemu.qmp import QMPFailure, QMPLoop
from virtproof.premigrate import cancel
from virtproof.premigrate import milestones as ms
from virtproof.premigrate.devicemodel import DeviceModel, device_model, qemu_config
from virtproof.premigrate.gfs import open_guestfs
from virtproof.premigrate.probe import InitSystem, install_probe, parse_probe
from virtproof.premigrate.screen import (
    TEXT_MODE_SIZES,
    Frame,
    ScreenError,
    parse_vga_text,
    png_bytes,
    read_ppm,
    vga_text_command,
)

SCREEN_EVERY_S = 2.0
SSH_GRACE_S = 30.0
TEXT_EVERY_S = 1.0
MILESTONES = {"kernel": ms.KERNEL, "root_mounted": ms.USERSPACE, "login_prompt": ms.LOGIN}
FAILURES = ms.FAILURES


@dataclass(frozen=True)
class BootProof:
    milestones: dict[str, float]  # name -> seconds after qemu start
    failure: str | None
    ssh_banner: str | None
    probe_installed: bool
    network: str | None  # probe's net-up line, or None
    network_down: str | None
    checksums_ok: tuple[str, ...]
    checksums_bad: tuple[str, ...]
    checksums_missing: tuple[str, ...]
    evidence: tuple[str, ...]
    seconds: float
    timed_out: bool
    console_tail: str = ""
    qemu_argv: tuple[str, ...] = field(default=())
    stages: tuple[str, ...] = ()  # firmware, bootloader, kernel, userspace, network, sshd reached
    stopped: str = ""  # one line: where the boot stopped (or how far it got)
    screen_png: str | None = None  # the last screen, kept beside the verdict
    screen_text: str = ""  # the last VGA text screen, if the screen was in text mode
    devices: str = ""  # the device model booted (machine, firmware, buses)

    @property
    def booted(self) -> bool:
        return "root_mounted" in self.milestones and self.failure is None

    @property
    def reachable(self) -> bool:
        return self.ssh_banner is not None or self.network is not None


def stop_all() -> int:
    """Stop every qemu this process started, boot proofs included, and every qemu-img or
    virt-v2v still converting (signal handlers call this)."""
    from virtproof.premigrate.convert import kill_running_tools

    return kill_all_started() + kill_running_tools()


def _ssh_banner(port: int, wait: float = 0.25) -> str | None:
    """The guest's ``SSH-`` banner through the forwarded port, waiting ``wait`` s for it (qemu's
    user networking accepts the connection before the guest listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(wait)
            data = s.recv(64)
    except OSError:
        return None
    text = data.decode("ascii", "replace").strip()
    return text if text.startswith("SSH-") else None


def make_overlay(disk: Path, fmt: str, overlay: Path) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()), "-F", fmt, str(overlay)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def prepare_overlay(disk: Path, fmt: str, overlay: Path, init: InitSystem, root_device: str, files: list[str]) -> bool:
    """A qcow2 overlay of ``disk`` with the boot probe in it; True if the probe could be hooked."""
    make_overlay(disk, fmt, overlay)
    if init not in ("systemd", "micro"):
        return False
    with open_guestfs([(overlay, "qcow2", False)]) as g:
        g.mount(root_device, "/")
        installed = install_probe(g, init, files)
        g.umount_all()
    return installed


class _Screen:
    """Frames and VGA text from a running qemu (best effort: a guest in a graphics mode has no text)."""

    def __init__(self, qemu: QemuProcess, directory: Path) -> None:
        self.qemu = qemu
        self.directory = directory
        self.last: Frame | None = None
        self.text = ""
        self.texts: list[str] = []
        self.drawn = False
        self.graphics = False
        self._modes: list[tuple[int, int]] = []
        self._next_frame = 0.0
        self._next_text = 0.0

    def poll(self, now: float) -> None:
        if now >= self._next_frame:
            self._next_frame = now + SCREEN_EVERY_S
            self.grab()
        if now >= self._next_text and (self.last is None or self.last.text_mode):
            self._next_text = now + TEXT_EVERY_S
            self.read_text()

    def grab(self) -> None:
        path = self.directory / "screen.ppm"
        try:
            self.qemu.screendump(path)
            frame = read_ppm(path.read_bytes())
        except (QMPFailure, OSError, ScreenError):
            return
        self.last = frame
        mode = (frame.width, frame.height)
        if not self._modes or self._modes[-1] != mode:
            self._modes.append(mode)
        # Before the guest sets a video mode, qemu shows its own 640x480 "Guest has not
        # initialized the display" frame: only a text-mode frame or a later mode is the guest's.
        # A graphics mode after a text-mode BIOS screen is the boot loader's (GRUB's gfxterm);
        # under OVMF the firmware itself draws in graphics.
        if not frame.blank and (frame.text_mode or len(self._modes) > 1):
            self.drawn = True
            seen_text = any(m in TEXT_MODE_SIZES for m in self._modes[:-1])
            self.graphics = self.graphics or (not frame.text_mode and seen_text)

    def read_text(self) -> None:
        try:
            out = self.qemu.qmp.execute("human-monitor-command", {"command-line": vga_text_command()}, timeout=5)
        except QMPFailure:
            return
        text = parse_vga_text(str(out))
        if text.strip() and text != self.text:
            self.text = text
            self.texts.append(text)
            del self.texts[:-40]

    def save_png(self, path: Path) -> str | None:
        if self.last is None:
            return None
        path.write_bytes(png_bytes(self.last))
        return str(path)


def boot_and_follow(
    disk: Path,
    fmt: str,
    workdir: Path,
    *,
    vm: dict[str, Any],
    name: str,
    expected: dict[str, str] | None = None,
    probe_installed: bool = False,
    timeout_s: float = 300.0,
    root_wait_s: float = 150.0,
    memory_mib: int | None = None,
    evidence_dir: Path | None = None,
) -> BootProof:
    """Boot ``disk`` (already holding the probe, if any) with the devices of ``vm``, follow the
    console and the screen, stop qemu. The last screen goes to ``evidence_dir/<name>.screen.png``."""
    expected = expected or {}
    cancel.check()
    model: DeviceModel = device_model(vm)
    port = free_port()
    directory = _boot_dir(workdir)
    cfg = qemu_config(model, disk, fmt, directory, name=name, ssh_port=port, memory_mib=memory_mib)
    console = cfg.console_log
    loop = QMPLoop(f"bootproof-{name}")
    started = time.monotonic()
    # die_with_parent: qemu dies with the thread that started it, even if we are SIGKILLed.
    try:
        qemu = QemuProcess(cfg, loop, die_with_parent())
    except OSError:
        loop.close()
        raise
    proc = qemu.popen
    screen = _Screen(qemu, directory)
    milestones: dict[str, float] = {}
    failure: str | None = None
    banner: str | None = None
    text = ""
    failure_at: float | None = None
    next_ssh = 0.0
    timed_out = False
    seen = ms.Seen()
    try:
        with contextlib.suppress(QMPFailure):  # qemu exited at once: the loop below reports it
            qemu.connect(30)
        while True:
            now = time.monotonic() - started
            cancel.check()  # qemu is stopped in the finally below
            if proc.poll() is not None:
                failure = failure or f"qemu exited with {proc.returncode}: {qemu.stderr_tail(200)}"
                break
            with contextlib.suppress(FileNotFoundError):
                text = console.read_bytes().decode("utf-8", "replace")
            if model.video:
                screen.poll(now)
            probe = parse_probe(text)
            seen = ms.Seen(
                console=text,
                screen_text="\n".join(screen.texts),
                frame_drawn=screen.drawn,
                graphics_frame=screen.graphics,
                probe_begun=probe.begun,
                network=probe.net_up is not None,
                ssh=banner is not None,
            )
            for stage in ms.stages(seen):
                milestones.setdefault(stage, now)
            joined = text + "\n" + seen.screen_text
            for key, pattern in MILESTONES.items():
                if key not in milestones and pattern.search(joined):
                    milestones[key] = now
            bad = ms.failure(seen)
            if bad and failure is None:
                failure, failure_at = bad, now
            if (
                failure is None
                and "kernel" in milestones
                and "root_mounted" not in milestones
                and now - milestones["kernel"] > root_wait_s
            ):
                failure, failure_at = f"root file system not mounted {root_wait_s:.0f} s after the kernel started", now
            if ("kernel" in milestones or "bootloader" in milestones) and banner is None and now >= next_ssh:
                # Each abandoned connection costs the guest an sshd fork, and a loaded TCG guest
                # needs seconds to answer: wait longer per connection as the wait grows.
                wait = min(5.0, 0.25 + (now - milestones.get("kernel", milestones.get("bootloader", now))) / 30)
                banner = _ssh_banner(port, wait)
                if banner:
                    milestones["sshd"] = now
                next_ssh = now + 1.0 + wait
            if probe.ended and "probe_done" not in milestones:
                milestones["probe_done"] = now
            if probe.net_up and "network_up" not in milestones:
                milestones["network_up"] = now
            done_probe = probe.ended or not probe_installed
            if failure_at is not None and now - failure_at > 3:
                break
            # Done: the probe has reported and sshd answers; a login prompt alone ends it only
            # after SSH_GRACE_S more (sshd often comes up just after getty).
            login = milestones.get("login_prompt")
            if done_probe and failure is None and (banner or (login is not None and now - login > SSH_GRACE_S)):
                break
            if now > timeout_s:
                timed_out = True
                break
            time.sleep(0.25)
        if model.video and proc.poll() is None:
            screen.grab()
            if screen.last is None or screen.last.text_mode:
                screen.read_text()
    finally:
        qemu.stop()
        loop.close()
    with contextlib.suppress(FileNotFoundError):
        text = console.read_bytes().decode("utf-8", "replace")
    report = parse_probe(text)
    seen = ms.Seen(
        console=text,
        screen_text="\n".join(screen.texts),
        frame_drawn=screen.drawn,
        graphics_frame=screen.graphics,
        probe_begun=report.begun,
        network=report.net_up is not None,
        ssh=banner is not None,
    )
    ok = tuple(p for p, h in expected.items() if report.checksums.get(p) == h)
    bad_sums = tuple(p for p, h in expected.items() if p in report.checksums and report.checksums[p] != h)
    missing = tuple(p for p in expected if p not in report.checksums)
    booted = "root_mounted" in milestones and failure is None
    stopped = ms.where_stopped(seen, booted and not timed_out)
    if timed_out and not booted:
        stopped += f" (timed out after {timeout_s:.0f} s)"
    png = None
    if evidence_dir is not None:
        evidence_dir.mkdir(parents=True, exist_ok=True)
        png = screen.save_png(evidence_dir / f"{name}.screen.png")
    return BootProof(
        milestones=milestones,
        failure=failure,
        ssh_banner=banner,
        probe_installed=probe_installed,
        network=report.net_up,
        network_down=report.net_down,
        checksums_ok=ok,
        checksums_bad=bad_sums,
        checksums_missing=missing if report.begun or probe_installed else (),
        evidence=_evidence(text + "\n" + screen.text),
        seconds=time.monotonic() - started,
        timed_out=timed_out,
        console_tail="\n".join(_clean(text).splitlines()[-25:]),
        qemu_argv=tuple(qemu.argv),
        stages=tuple(ms.stages(seen)),
        stopped=stopped,
        screen_png=png,
        screen_text=screen.text,
        devices=model.describe(),
    )


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "")


def _evidence(text: str) -> tuple[str, ...]:
    lines = []
    for line in _clean(text).splitlines():
        if any(p.search(line) for p in MILESTONES.values()) or FAILURES.search(line) or "VIRTPROOF-PROBE net" in line:
            lines.append(line.strip()[:200])
    return tuple(lines[:12])


def _boot_dir(workdir: Path) -> Path:
    """A fresh, short directory for one boot's qemu files (its QMP socket path must stay short)."""
    for n in range(1000):
        directory = workdir / f"boot{n}"
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            continue
        return directory
    raise RuntimeError(f"{workdir}: no free boot directory")
