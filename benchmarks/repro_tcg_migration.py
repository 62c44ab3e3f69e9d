"""Reproduce qemu-tcg-dirty-bitmap without virtproof's harness: bare qemu, QMP, loopback migration.

QEMU before 9.0 loses guest writes during a TCG live migration when the guest's RAM block is a
multiple of 64 pages (256 KiB): the dirty-bitmap sync's fast path clears the migration bitmap
without resetting the TCG TLB's dirty state, later stores are not recorded and the destination
resumes with stale pages. Fixed upstream by 03bfc2188f ("physmem: Fix migration dirty bitmap
coherency with TCG memory access", QEMU 9.0). virtproof's lab pads guest RAM by 8 KiB
(``lab/qemu/defects.py``); this script shows why, with nothing of the lab in the way:

- two ``qemu-system-x86_64 -accel tcg`` processes per move, the source and one started with
  ``-incoming tcp:127.0.0.1:PORT``, driven over QMP on unix sockets;
- the guest is virtproof's micro image (kernel + initramfs; built or reused from the cache by
  ``virtproof.lab.images.micro``, or given with ``--kernel``/``--initrd``), booted with
  ``vp.memcheck=MIB,MIBPS,HOT`` so its boot hook starts ``vp-memcheck`` (a (page, generation)
  pattern rewritten at MIBPS, 0 = flat out); ``GET /cgi-bin/memcheck`` (busybox httpd, reached by
  user-net ``hostfwd`` on 127.0.0.1) verifies every page and returns the JSON report;
- each configuration (``-m 262144K`` = 256 MiB exactly, and ``-m 262152K`` = 256 MiB + 8 KiB)
  boots one guest and moves it ``--moves`` times back and forth, verifying after every move; the
  result is the bad pages found per configuration (and any kernel oops on the serial console).
  Defaults: 32 MiB rewritten at 48 MiB/s, migration capped at 64 MiB/s with a 100 ms downtime
  limit (about 10 dirty syncs per move). On Debian's 7.2.22 that broke the unpadded guest at its
  first move in 8 runs of 8 (a kernel panic or oops; qemu exits, -no-reboot), and the padded one
  moved 19 times of 19 intact. Uncapped (1 GiB/s, 3-4 syncs per move, flat out) the unpadded guest
  was corrupted in only 4 runs of 7 (2 moves each): the trigger wants many dirty syncs.

    .venv/bin/python benchmarks/repro_tcg_migration.py                # 256 MiB vs 256 MiB + 8 KiB
    .venv/bin/python benchmarks/repro_tcg_migration.py --moves 2 --json

Exit status 0 when it ran (whatever it found), 2 when it could not run. Needs only qemu and the
image; nothing is left behind (every qemu is killed, the work directory removed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from virtproof.core.ports import free_port

QEMU = "qemu-system-x86_64"
MIB = 1024 * 1024
KERNEL_TROUBLE = re.compile(
    r"BUG:|Oops|list_add corruption|list_del corruption|general protection fault|Kernel panic|"
    r"soft lockup|rcu_(?:preempt|sched) detected stall|Bad page|unable to handle page fault|invalid opcode:"
)


class ReproError(RuntimeError):
    """The reproducer could not run (qemu or the guest did not come up)."""


class WorkloadDied(ReproError):
    """vp-memcheck in the guest is gone: after a move, the guest's memory broke it (or its kernel)."""


# --- QMP ---------------------------------------------------------------------------------------


class Qmp:
    """A minimal QMP client on a unix socket: commands in order, events skipped."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError as exc:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise ReproError(f"QMP socket {path}: {exc}") from exc
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ReproError("QMP connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        doc: dict[str, Any] = json.loads(line)
        return doc

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise ReproError(f"QMP {command}: {exc}") from exc
        while True:
            try:
                reply = self._read()
            except OSError as exc:
                raise ReproError(f"QMP {command}: {exc}") from exc
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise ReproError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def close(self) -> None:
        self.sock.close()


# --- qemu ------------------------------------------------------------------------------------


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ReproError(f"{QEMU} --version: {exc}") from exc
    return out.splitlines()[0].strip() if out else "unknown"


@dataclass
class Guest:
    """One qemu process of the guest (the source, or a destination waiting with -incoming)."""

    directory: Path
    proc: subprocess.Popen[bytes]
    qmp: Qmp
    http_port: int

    def stop(self) -> None:
        with contextlib.suppress(OSError, ReproError):
            self.qmp.execute("quit")
        with contextlib.suppress(OSError):
            self.qmp.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Config:
    name: str
    ram_kib: int
    kernel: Path
    initrd: Path
    region_mib: int
    rate_mibps: int
    hot_pages: int
    cpus: int
    bandwidth_mibps: int
    downtime_ms: int


def start_qemu(cfg: Config, directory: Path, incoming_port: int | None) -> Guest:
    directory.mkdir(parents=True)
    if len(str(directory / "qmp")) > 107:
        raise ReproError(f"{directory}: too long a path for a unix socket (108 bytes); set TMPDIR shorter")
    http_port = free_port()
    append = (f"console=ttyS0 quiet panic=-1 vp.name=repro "
              f"vp.memcheck={cfg.region_mib},{cfg.rate_mibps},{cfg.hot_pages}")  # fmt: skip
    argv = [
        QEMU, "-machine", "q35", "-accel", "tcg,tb-size=64", "-cpu", "max", "-smp", str(cfg.cpus),
        "-m", f"{cfg.ram_kib}K", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"file,id=console,path={directory / 'console.log'}", "-serial", "chardev:console",
        "-qmp", f"unix:{directory / 'qmp'},server=on,wait=off",
        "-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd), "-append", append,
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{http_port}-:80", "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip
    if incoming_port is not None:
        argv += ["-incoming", f"tcp:127.0.0.1:{incoming_port}"]
    log = open(directory / "qemu.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        qmp = Qmp(directory / "qmp")
    except ReproError as exc:
        proc.kill()
        proc.wait(timeout=10)
        raise ReproError(f"{exc}; qemu said: {(directory / 'qemu.log').read_text()[-500:]}") from exc
    return Guest(directory, proc, qmp, http_port)


def memcheck_report(guest: Guest, timeout: float, running: bool = True) -> dict[str, Any]:
    """GET /cgi-bin/memcheck until it answers with a report (vp-memcheck verifies every page).

    ``running``: the workload ran before (after a move), so a checker that finds none is final;
    at boot it is retried (the boot hook writes its pid once the region is filled)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if guest.proc.poll() is not None:
            raise ReproError(f"qemu exited ({guest.proc.returncode}) before the guest answered")
        try:
            url = f"http://127.0.0.1:{guest.http_port}/cgi-bin/memcheck"
            with urllib.request.urlopen(url, timeout=150) as response:
                body = response.read().decode(errors="replace")
            for line in body.splitlines():
                if line.startswith("{") and '"seq"' in line:
                    report: dict[str, Any] = json.loads(line)
                    return report
            last = body.strip()[-200:] or "an empty answer"
            if running and '"exit": 2' in body:  # the checker answered: its workload is not running
                raise WorkloadDied(f"vp-memcheck's workload is gone: {' '.join(body.split())[-200:]}")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(1.0)
    raise ReproError(f"no memcheck report from the guest in {timeout:g} s: {last}")


def migrate(
    source: Guest, destination_port: int, timeout: float, bandwidth_mibps: int, downtime_ms: int
) -> dict[str, Any]:
    params = {"max-bandwidth": bandwidth_mibps * MIB, "downtime-limit": downtime_ms}
    source.qmp.execute("migrate-set-parameters", **params)
    source.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{destination_port}")
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = source.qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise ReproError(f"migration {status}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            with contextlib.suppress(ReproError, OSError):
                source.qmp.execute("migrate_cancel")
            raise ReproError(f"migration not finished after {timeout:g} s (status {status})")
        time.sleep(0.1)


def wait_running(guest: Guest, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if guest.proc.poll() is not None:  # -no-reboot and panic=-1: a guest kernel panic ends qemu
            raise WorkloadDied(f"the destination qemu exited ({guest.proc.returncode}): the guest panicked")
        if guest.qmp.execute("query-status").get("status") == "running":
            return
        time.sleep(0.05)
    raise ReproError("the destination did not resume the guest")


# --- one configuration -------------------------------------------------------------------------


@dataclass
class Move:
    seconds: float
    transferred_mib: float
    dirty_syncs: int
    bad_pages: int  # found by the verify after the move plus the workload's own sweeps since the last one
    first_bad: list[str] = field(default_factory=list)
    broken: str | None = None  # the guest could not be verified after this completed move: why
    verify_s_per_gib: float | None = None  # what the verify after the move took, per GiB of region


@dataclass
class Result:
    config: str
    ram_kib: int
    moves: list[Move] = field(default_factory=list)
    bad_before: int = 0  # found before any move: must be 0, else the checker itself is wrong
    kernel_trouble: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def bad_pages(self) -> int:
        return sum(m.bad_pages for m in self.moves)

    @property
    def corrupted(self) -> bool:
        """Bad pages found, or a guest broken by a move (its checker gone, an oops on its console)."""
        return self.bad_pages > 0 or any(m.broken for m in self.moves) or bool(self.kernel_trouble)


def _found(report: dict[str, Any]) -> tuple[int, list[str]]:
    bad = [*report.get("bad", []), *report.get("sweep_bad", [])]
    first = [f"page {b.get('page')} holds gen {b.get('holds_gen')} expected {b.get('expected_gen')}" for b in bad[:4]]
    return int(report["bad_pages"]) + int(report["sweep_bad_pages"]), first


def run_config(cfg: Config, moves: int, work: Path, boot_timeout: float, move_timeout: float) -> Result:
    result = Result(cfg.name, cfg.ram_kib)
    guests: list[Guest] = []
    try:
        current = start_qemu(cfg, work / "b", None)
        guests.append(current)
        before = memcheck_report(current, boot_timeout, running=False)
        result.bad_before = _found(before)[0]
        for n in range(moves):
            port = free_port()
            destination = start_qemu(cfg, work / f"m{n}", port)
            guests.append(destination)
            started = time.monotonic()
            info = migrate(current, port, move_timeout, cfg.bandwidth_mibps, cfg.downtime_ms)
            elapsed = time.monotonic() - started
            ram = info.get("ram") or {}
            move = Move(round(elapsed, 2), round(ram.get("transferred", 0) / MIB, 1),
                        int(ram.get("dirty-sync-count", 0)), 0)  # fmt: skip
            result.moves.append(move)
            try:
                wait_running(destination, 30)
                current.stop()
                guests.remove(current)
                current = destination
                report = memcheck_report(current, 60)
                move.bad_pages, move.first_bad = _found(report)
                move.verify_s_per_gib = float(report.get("s_per_gib", 0.0))
            except ReproError as exc:  # the move completed, the guest it left behind does not answer
                move.broken = str(exc)
                break
    except ReproError as exc:
        result.error = str(exc)
    finally:
        for guest in guests:
            guest.stop()
        seen: set[str] = set()
        for console in sorted(work.glob("*/console.log")):
            for line in console.read_text(errors="replace").splitlines():
                if KERNEL_TROUBLE.search(line) and line.strip() not in seen:
                    seen.add(line.strip())
                    result.kernel_trouble.append(line.strip())
    return result


# --- main --------------------------------------------------------------------------------------


def micro_image() -> tuple[Path, Path]:
    """The micro image's kernel and initramfs (built once and cached by virtproof's image builder)."""
    from virtproof.lab.images.micro import build_micro, cache_root_default

    image = build_micro(cache_root_default())
    if image.kernel is None or image.initrd is None:
        raise ReproError("the micro image has no kernel/initramfs")
    return image.kernel, image.initrd


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vpr-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--ram-mib", type=int, default=256, help="guest RAM of the unpadded config (MiB)")
    parser.add_argument("--pad-kib", type=int, default=8, help="what the padded config adds (KiB)")
    parser.add_argument("--configs", default="unpadded,padded", help="which, in order: unpadded,padded")
    parser.add_argument("--moves", type=int, default=4, help="moves per config, verified after each")
    parser.add_argument("--region-mib", type=int, default=32, help="vp-memcheck's region")
    parser.add_argument("--rate-mibps", type=int, default=48, help="vp-memcheck's dirty rate (0: flat out)")
    parser.add_argument("--hot-pages", type=int, default=16, help="vp-memcheck's hot set")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--bandwidth-mibps", type=int, default=64, help="migration max-bandwidth")
    parser.add_argument("--downtime-ms", type=int, default=100, help="migration downtime-limit")
    parser.add_argument("--kernel", type=Path)
    parser.add_argument("--initrd", type=Path)
    parser.add_argument("--boot-timeout", type=float, default=180)
    parser.add_argument("--move-timeout", type=float, default=180)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally blocks: no qemu left
    try:
        version = qemu_version()
        kernel, initrd = (args.kernel, args.initrd) if args.kernel and args.initrd else micro_image()
    except ReproError as exc:
        print(f"repro_tcg_migration: {exc}", file=sys.stderr)
        return 2
    sizes = {"unpadded": args.ram_mib * 1024, "padded": args.ram_mib * 1024 + args.pad_kib}
    results: list[Result] = []
    with workdir() as work:
        for name in args.configs.split(","):
            cfg = Config(name, sizes[name], kernel, initrd, args.region_mib, args.rate_mibps, args.hot_pages,
                         args.cpus, args.bandwidth_mibps, args.downtime_ms)  # fmt: skip
            results.append(run_config(cfg, args.moves, work / name, args.boot_timeout, args.move_timeout))
    if args.json:
        doc = {"qemu_version": version, "accel": "tcg", "region_mib": args.region_mib,
               "rate_mibps": args.rate_mibps, "hot_pages": args.hot_pages,
               "results": [{**asdict(r), "bad_pages": r.bad_pages, "corrupted": r.corrupted}
                           for r in results]}  # fmt: skip
        print(json.dumps(doc))
    else:
        print(f"{version}, -accel tcg, vp-memcheck {args.region_mib} MiB at "
              f"{args.rate_mibps or 'flat out'} MiB/s, {args.hot_pages} hot pages")  # fmt: skip
        for r in results:
            per_move = ", ".join(str(m.bad_pages) for m in r.moves)
            line = f"{r.config:>8} -m {r.ram_kib}K: {r.bad_pages} bad pages in {len(r.moves)} moves [{per_move}]"
            line += f", {'CORRUPTED' if r.corrupted else 'intact'}"
            broken = [m.broken for m in r.moves if m.broken]
            if broken:
                line += f"; guest broken after move {len(r.moves)}: {broken[0][:120]}"
            if r.kernel_trouble:
                line += f"; kernel: {r.kernel_trouble[0][:120]}"
            if r.error:
                line += f"; error: {r.error}"
            print(line)
            for m in r.moves:
                if m.first_bad:
                    print(f"           {m.seconds} s, {m.transferred_mib} MiB, {m.dirty_syncs} syncs: "
                          + "; ".join(m.first_bad))  # fmt: skip
    return 0 if all(r.error is None for r in results) else 2


if __name__ == "__main__":
    sys.exit(main())
