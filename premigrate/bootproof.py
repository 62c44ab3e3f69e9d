"""Prove a converted disk boots on the devices KubeVirt gives a VM, by booting it under qemu.

q35, the disk on virtio-blk (or virtio-scsi) and virtio-net behind PCIe root ports as KubeVirt
lays them out (so the first NIC is ``enp1s0``), virtio-rng, TCG, ``snapshot=on``, started by the
lab's own qemu launcher (``virtproof.lab.qemu.process``). The serial console goes to a file that
we follow: kernel started, root mounted, probe output (checksums, network), login prompt; sshd is
checked from the host through a forwarded port (an ``SSH-`` banner). qemu is always stopped by us
(a converted guest may hang at poweroff).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from virtproof.lab.qemu.process import Disk, QemuConfig, QemuProcess, UserNic, die_with_parent, kill_all_started
from virtproof.lab.qemu.qmp import QMPFailure, QMPLoop
from virtproof.premigrate.gfs import open_guestfs
from virtproof.premigrate.probe import InitSystem, install_probe, parse_probe

Bus = Literal["virtio", "scsi"]

MILESTONES = {
    "kernel": re.compile(r"Linux version \S+"),
    "root_mounted": re.compile(
        r"EXT4-fs \(\w+\): mounted filesystem|XFS \(\w+\): Ending clean mount|virtproof: root \S+ mounted"
        r"|VFS: Mounted root|Reached target.*Local File Systems"
    ),
    "login_prompt": re.compile(r"\S+ login: ?$|virtproof: ready", re.M),
}
FAILURES = re.compile(
    r"ALERT! .* does not exist|Gave up waiting for root|Kernel panic|Dropping to a shell"
    r"|virtproof: root device \S+ not found|You are in emergency mode|Unable to mount root|No init found"
    r"|Loading \S+\.\.\. failed|No bootable device|Boot failed: could not read the boot disk"
)


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

    @property
    def booted(self) -> bool:
        return "root_mounted" in self.milestones and self.failure is None

    @property
    def reachable(self) -> bool:
        return self.ssh_banner is not None or self.network is not None


def stop_all() -> int:
    """Stop every qemu this process started, boot proofs included (signal handlers call this)."""
    return kill_all_started()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ssh_banner(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.25)
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


def boot_config(disk: Path, fmt: str, bus: Bus, directory: Path, port: int, name: str, memory_mib: int) -> QemuConfig:
    """The qemu the boot proof starts: KubeVirt's devices for this disk, SSH forwarded to ``port``."""
    return QemuConfig(
        guest_name=name,
        directory=directory,
        cpus=1,
        memory_mib=memory_mib,
        machine="q35",
        accel="tcg",
        disks=(Disk(disk, fmt, bus, snapshot=True, boot_index=1),),  # type: ignore[arg-type]
        nics=(UserNic("127.0.0.1", ((port, 22),)),),
        start_paused=False,
        pcie_root_ports=True,
        no_reboot=False,
    )


def boot_and_follow(
    disk: Path,
    fmt: str,
    workdir: Path,
    *,
    name: str,
    bus: Bus = "virtio",
    expected: dict[str, str] | None = None,
    probe_installed: bool = False,
    timeout_s: float = 300.0,
    root_wait_s: float = 150.0,
    memory_mib: int = 1024,
) -> BootProof:
    """Boot ``disk`` (already holding the probe, if any), follow the console, stop qemu."""
    expected = expected or {}
    port = _free_port()
    cfg = boot_config(disk, fmt, bus, _boot_dir(workdir), port, name, memory_mib)
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
    milestones: dict[str, float] = {}
    failure: str | None = None
    banner: str | None = None
    text = ""
    failure_at: float | None = None
    next_ssh = 0.0
    timed_out = False
    try:
        with contextlib.suppress(QMPFailure):  # qemu exited at once: the loop below reports it
            qemu.connect(30)
        while True:
            now = time.monotonic() - started
            if proc.poll() is not None:
                failure = failure or f"qemu exited with {proc.returncode}"
                break
            with contextlib.suppress(FileNotFoundError):
                text = console.read_bytes().decode("utf-8", "replace")
            for key, pattern in MILESTONES.items():
                if key not in milestones and pattern.search(text):
                    milestones[key] = now
            bad = FAILURES.search(text)
            if bad and failure is None:
                failure, failure_at = bad.group(0), now
            if (
                failure is None
                and "kernel" in milestones
                and "root_mounted" not in milestones
                and now - milestones["kernel"] > root_wait_s
            ):
                failure, failure_at = f"root file system not mounted {root_wait_s:.0f} s after the kernel started", now
            if "kernel" in milestones and banner is None and now >= next_ssh:
                banner = _ssh_banner(port)
                if banner:
                    milestones["sshd"] = now
                next_ssh = now + 1.0
            report = parse_probe(text)
            if report.ended and "probe_done" not in milestones:
                milestones["probe_done"] = now
            if report.net_up and "network_up" not in milestones:
                milestones["network_up"] = now
            done_probe = report.ended or not probe_installed
            if failure_at is not None and now - failure_at > 3:
                break
            if done_probe and (banner or "login_prompt" in milestones) and failure is None:
                break
            if now > timeout_s:
                timed_out = True
                break
            time.sleep(0.25)
    finally:
        qemu.stop()
        loop.close()
    with contextlib.suppress(FileNotFoundError):
        text = console.read_bytes().decode("utf-8", "replace")
    report = parse_probe(text)
    ok = tuple(p for p, h in expected.items() if report.checksums.get(p) == h)
    bad_sums = tuple(p for p, h in expected.items() if p in report.checksums and report.checksums[p] != h)
    missing = tuple(p for p in expected if p not in report.checksums)
    evidence = _evidence(text)
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
        evidence=evidence,
        seconds=time.monotonic() - started,
        timed_out=timed_out,
        console_tail="\n".join(_clean(text).splitlines()[-25:]),
        qemu_argv=tuple(qemu.argv),
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
