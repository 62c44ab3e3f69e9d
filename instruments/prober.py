"""Guest-observed downtime: a prober process outside the harness's control path.

``python -m virtproof.instruments.prober HOST PORT --out FILE`` runs as its own process and opens a new probe
every ``--interval-ms`` (10 ms: 100 Hz) whether or not earlier ones answered, so one lost SYN
(retransmitted by the kernel only after 1 s) does not hide the moment the guest answers again.
A probe is ``GET /name`` over a fresh connection (``--mode http``; answered when ``HTTP/``
comes back) or a bare connect (``--mode tcp``; a SYN-ACK is an answer). A refused connection is
never an answer: through a Service it is kube-proxy (or a node) with no ready endpoint, not the
guest. Each probe ends as one line ``<sent> <answered or -> <status>`` (epoch seconds).
It stops on SIGTERM/SIGINT, after ``--duration-s``, or when its parent goes away.

The harness side (``Prober``, ``ProbeLog``) starts and stops the process and reads the file;
the longest gap between consecutive answers around a window is the guest-observed downtime.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ProbeMode = Literal["http", "tcp"]
DEFAULT_INTERVAL_MS = 10.0
DEFAULT_TIMEOUT_S = 1.0
MAX_DURATION_S = 3600.0


# --- the probing process ---------------------------------------------------------------


@dataclass
class _Probe:
    sock: socket.socket
    sent: float
    deadline: float
    connected: bool = False


def _run(host: str, port: int, out: Path, mode: ProbeMode, interval: float, timeout: float, duration: float) -> int:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.getppid()
    request = f"GET /name HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    inflight: dict[int, _Probe] = {}
    lines: list[str] = []
    end = time.monotonic() + duration
    next_send = time.monotonic()
    last_flush = next_send
    with open(out, "w", buffering=1 << 16) as fh:  # a fresh log: never mix runs

        def finish(probe: _Probe, answered: float | None, status: str) -> None:
            sel.unregister(probe.sock)
            inflight.pop(probe.sock.fileno(), None)
            probe.sock.close()
            shown = "-" if answered is None else f"{answered:.6f}"
            lines.append(f"{probe.sent:.6f} {shown} {status}\n")

        while not stop:
            now = time.monotonic()
            if now > end or os.getppid() != parent:
                break
            if now >= next_send:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sent = time.time()
                code = sock.connect_ex((host, port))
                probe = _Probe(sock, sent, now + timeout)
                if code not in (0, errno.EINPROGRESS):
                    sel.register(sock, selectors.EVENT_WRITE, probe)
                    inflight[sock.fileno()] = probe
                    status = "refused" if code == errno.ECONNREFUSED else f"error-{errno.errorcode.get(code, code)}"
                    finish(probe, None, status)
                else:
                    sel.register(sock, selectors.EVENT_WRITE, probe)
                    inflight[sock.fileno()] = probe
                next_send += interval
                if next_send < now - interval:  # fell behind (a stall of this process): skip, do not burst
                    next_send = now + interval
            wait = max(0.0, min(next_send - time.monotonic(), 0.05))
            for key, _mask in sel.select(wait):
                probe = key.data
                if not probe.connected:
                    err = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err == errno.ECONNREFUSED:
                        finish(probe, None, "refused")
                    elif err:
                        finish(probe, None, f"error-{errno.errorcode.get(err, err)}")
                    elif mode == "tcp":
                        finish(probe, time.time(), "ok")
                    else:
                        probe.connected = True
                        try:
                            probe.sock.send(request)
                        except OSError as exc:
                            finish(probe, None, f"error-{type(exc).__name__}")
                            continue
                        sel.modify(probe.sock, selectors.EVENT_READ, probe)
                    continue
                try:
                    data = probe.sock.recv(64)
                except OSError as exc:
                    finish(probe, None, f"error-{type(exc).__name__}")
                    continue
                if data.startswith(b"HTTP/"):
                    finish(probe, time.time(), "ok")
                else:
                    finish(probe, None, "bad-answer" if data else "closed")
            now = time.monotonic()
            for probe in [p for p in inflight.values() if p.deadline < now]:
                finish(probe, None, "timeout")
            if lines and now - last_flush > 0.25:
                fh.writelines(lines)
                fh.flush()
                lines.clear()
                last_flush = now
        for probe in list(inflight.values()):
            finish(probe, None, "stopped")
        fh.writelines(lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtproof.instruments.prober",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=["http", "tcp"], default="http")
    parser.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL_MS)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--duration-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    if not 0.5 <= args.interval_ms <= 1000 or not 0 < args.duration_s <= MAX_DURATION_S:
        parser.error("--interval-ms must be 0.5..1000 and --duration-s 0..3600")
    mode: ProbeMode = "tcp" if args.mode == "tcp" else "http"
    return _run(args.host, args.port, args.out, mode, args.interval_ms / 1000, args.timeout_s, args.duration_s)


# --- the harness side ------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeRecord:
    sent: float
    answered: float | None
    status: str


@dataclass(frozen=True)
class Gap:
    """The longest time without an answer around a window (seconds; epoch bounds)."""

    seconds: float
    start: float  # last answer before the gap
    end: float | None  # first answer after it (None: no answer came back before the prober stopped)
    probes_in_window: int
    answered_in_window: int

    @property
    def ms(self) -> float:
        return self.seconds * 1000


@dataclass(frozen=True)
class ProbeLog:
    records: tuple[ProbeRecord, ...]

    @classmethod
    def read(cls, path: Path) -> ProbeLog:
        records = []
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(())
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # a line cut short by a kill
            try:
                answered = None if parts[1] == "-" else float(parts[1])
                records.append(ProbeRecord(float(parts[0]), answered, parts[2]))
            except ValueError:
                continue
        return cls(tuple(sorted(records, key=lambda r: r.sent)))

    def answers(self) -> list[float]:
        return sorted(r.answered for r in self.records if r.answered is not None)

    def longest_gap(self, start: float, end: float) -> Gap | None:
        """Longest interval between consecutive answers that overlaps [start, end].

        None if no answer came before ``end`` at all (the prober never reached the guest).
        """
        answers = self.answers()
        in_window = [r for r in self.records if start <= r.sent <= end]
        answered = sum(1 for r in in_window if r.answered is not None)
        if not answers or answers[0] > end:
            return None
        best: Gap | None = None
        for a, b in itertools.pairwise(answers):
            if a > end:
                break
            if b >= start and (best is None or b - a > best.seconds):
                best = Gap(b - a, a, b, len(in_window), answered)
        last = answers[-1]
        if last <= end:  # silence from the last answer on: the guest did not answer again
            tail = max(end, self.records[-1].sent) - last
            if best is None or tail > best.seconds:
                best = Gap(tail, last, None, len(in_window), answered)
        return best

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for r in self.records if start <= r.sent <= end and r.answered is None)


class Prober:
    """The prober subprocess, started by the harness and never part of its control path."""

    def __init__(
        self,
        host: str,
        port: int,
        out: Path,
        mode: ProbeMode = "http",
        interval_ms: float = DEFAULT_INTERVAL_MS,
        duration_s: float = 600.0,
    ) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "virtproof.instruments.prober", host, str(port), "--out", str(out), "--mode", mode,
            "--interval-ms", str(interval_ms), "--duration-s", str(duration_s),
        ]  # fmt: skip
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def wait_answering(self, timeout: float) -> bool:
        """True once the prober has logged an answer (the guest is reachable through it)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.popen.poll() is None:
            if ProbeLog.read(self.out).answers():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> ProbeLog:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return ProbeLog.read(self.out)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
