"""The prober (its own process) and the locust load (its own process) against local servers."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.instruments.load import LoadSpec, LocustRun, RequestRecord, window
from virtproof.instruments.prober import ProbeLog, Prober, ProbeRecord
from virtproof.lab.platform import MigrationResult
from virtproof.suites.engines.migration import SETTLE_S, settle_probers

ROOT = Path(__file__).resolve().parent.parent


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"guest\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return


class _Server:
    """An HTTP server on a fixed port that can go away and come back (a guest's pause)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.stop()


def _log(*pairs: tuple[float, float | None]) -> ProbeLog:
    return ProbeLog(tuple(ProbeRecord(s, a, "ok" if a is not None else "timeout") for s, a in pairs))


def test_longest_gap_is_between_answers_around_the_window() -> None:
    log = _log((0.0, 0.01), (0.1, 0.11), (0.2, None), (0.3, None), (0.4, 0.95), (1.0, 1.01), (5.0, 5.01), (9.0, 9.5))
    gap = log.longest_gap(0.15, 0.5)
    assert gap is not None and gap.start == 0.11 and gap.end == 0.95
    assert gap.seconds == pytest.approx(0.84) and gap.probes_in_window == 3 and gap.answered_in_window == 1
    # the 1.01 -> 5.01 silence is outside the window and does not count
    assert log.longest_gap(0.0, 0.05) == log.longest_gap(0.0, 0.05)
    assert log.longest_gap(0.0, 0.05) is not None and log.longest_gap(0.0, 0.05).end == 0.11  # type: ignore[union-attr]


def test_no_answer_after_the_window_is_open_ended() -> None:
    log = _log((0.0, 0.01), (0.5, None), (1.0, None), (3.0, None))
    gap = log.longest_gap(0.2, 1.0)
    assert gap is not None and gap.end is None and gap.seconds == pytest.approx(2.99)
    assert _log((0.0, None)).longest_gap(0.0, 1.0) is None


def test_prober_process_sees_an_outage(server: _Server, tmp_path: Path) -> None:
    out = tmp_path / "probe.log"
    prober = Prober("127.0.0.1", server.port, out, interval_ms=5)
    try:
        assert prober.wait_answering(15), out.read_text() if out.exists() else "no log"
        time.sleep(0.3)
        server.stop()  # shutdown() returns once the server stopped answering (it polls every 0.5 s)
        down = time.time()
        time.sleep(0.6)
        up = time.time()  # before start(): the server may answer before start() returns
        server.start()
        time.sleep(0.5)
    finally:
        log = prober.stop()
    assert prober.popen.returncode == 0
    gap = log.longest_gap(down, up)
    assert gap is not None and gap.end is not None
    assert gap.start <= down and gap.end >= up, gap  # the whole outage is inside the gap
    assert log.failures_between(down, up) > 0
    sent = [r.sent for r in log.records]
    assert len(sent) > 100  # it kept probing through the outage


class _Listener:
    """A bare TCP listener on a fixed port that accepts and closes (what a tcp probe needs), and
    can be closed for a while: meanwhile every connect is answered with a RST (refused)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.sock: socket.socket | None = None
        self.open()

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    @staticmethod
    def _accept(sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self.sock.close()
            self.sock = None


def test_a_refused_tcp_connection_is_not_an_answer(tmp_path: Path) -> None:
    """tcp mode: a SYN-ACK is an answer; a RST (nothing listens: through a Service, kube-proxy or a
    node without a ready endpoint) is not, so a window of refusals is downtime, like silence."""
    listener = _Listener()
    out = tmp_path / "probe.log"
    prober = Prober("127.0.0.1", listener.port, out, mode="tcp", interval_ms=5)
    try:
        assert prober.wait_answering(15), out.read_text() if out.exists() else "no log"
        time.sleep(0.3)
        listener.close()
        down = time.time()
        time.sleep(0.6)
        up = time.time()  # before open(): a connect may be accepted before open() returns
        listener.open()
        time.sleep(0.5)
    finally:
        log = prober.stop()
        listener.close()
    during = [r for r in log.records if down + 0.01 <= r.sent <= up - 0.01]
    assert len(during) > 20 and all(r.answered is None for r in during), during[:5]
    assert {r.status for r in during} == {"refused"}, {r.status for r in during}  # answered at once, by a RST
    gap = log.longest_gap(down, up)
    assert gap is not None and gap.end is not None
    assert gap.start <= down and gap.end >= up, gap  # the refusals are inside the gap: counted as downtime
    assert gap.seconds >= up - down
    assert any(r.answered is not None for r in log.records if r.sent > up)  # and it answered again


def test_probers_run_until_the_moved_guest_answers_again(tmp_path: Path) -> None:
    """After a wave the probers keep running until every path answered again (a Service answers
    only once the target pod is Ready and its endpoints caught up), so the gap has an end: stopped
    a fixed 1.5 s after the move, three of four sim-kubevirt moves had open-ended gaps and no
    endpoint-switch lag."""
    listener = _Listener()
    out = tmp_path / "probe.log"
    prober = Prober("127.0.0.1", listener.port, out, mode="tcp", interval_ms=5)
    try:
        assert prober.wait_answering(15)
        listener.close()
        asked = time.time()
        ended = asked + 0.2  # the platform said the move ended; the guest still does not answer
        result = MigrationResult("vm", "node0", "node1", True, "precopy", asked, ended, 0.2, time_source="harness")
        back = SETTLE_S + 1.5  # it answers again well after the fixed settle time

        def reopen() -> None:
            time.sleep(back)
            listener.open()

        threading.Thread(target=reopen, daemon=True).start()
        started = time.monotonic()
        settle_probers([([prober], result)], bound_s=60)
        waited = time.monotonic() - started
    finally:
        log = prober.stop()
        listener.close()
    assert waited >= back, waited  # not stopped after SETTLE_S alone
    gap = log.longest_gap(*result.observed_window)
    assert gap is not None and gap.end is not None and gap.seconds >= back, gap  # the gap has its end
    # a guest that never answers again ends the wait at the bound, with an open-ended gap
    silent = tmp_path / "silent.log"
    dead = _Listener()
    prober = Prober("127.0.0.1", dead.port, silent, mode="tcp", interval_ms=5)
    try:
        assert prober.wait_answering(15)
        dead.close()
        now = time.time()
        started = time.monotonic()
        settle_probers([([prober], MigrationResult("vm", "a", "b", True, "precopy", now, now, 0.0))], bound_s=1.0)
        assert time.monotonic() - started < SETTLE_S + 10
    finally:
        gap = prober.stop().longest_gap(now, now)
    assert gap is not None and gap.end is None


def test_probers_read_a_move_in_the_harness_window_widened_by_the_platforms_resolution() -> None:
    """A KubeVirt move's ``started``/``finished`` are metav1.Time of another machine (whole seconds);
    the probers run on this host's clock, so they are read from when the harness asked for the
    move to when it saw it end, plus the platform's resolution (``MigrationResult.observed_window``,
    lab/platform.py): the cluster may stamp the end up to a second after the harness saw it."""
    asked, seen_end = 1_000.2, 1_004.6
    result = MigrationResult("vm", "node0", "node1", True, "precopy", started=1_000.0, finished=1_004.0,
                             total_s=4.0, time_source="platform", resolution_s=1.0, observed_started=asked,
                             observed_finished=seen_end)
    assert result.observed_window == (asked, seen_end + 1.0)  # never the cluster's own 1_000.0 / 1_004.0
    # 100 Hz answers, except a 300 ms outage that starts 0.2 s after the harness saw the end
    gap_from, gap_to = seen_end + 0.2, seen_end + 0.5
    answers = [999.0 + i / 100 for i in range(800) if not gap_from < 999.0 + i / 100 < gap_to]
    log = ProbeLog(tuple(ProbeRecord(t, t + 0.001, "ok") for t in answers))
    start, end = result.observed_window
    gap = log.longest_gap(start, end)
    assert gap is not None and gap.ms == pytest.approx(300, abs=11)  # the outage, inside the widened window
    narrow = log.longest_gap(asked, seen_end)  # without the resolution the outage would be missed
    assert narrow is not None and narrow.ms == pytest.approx(10, abs=1)
    # a harness-timed result (no platform times) is not widened
    local = MigrationResult("vm", "node0", "node1", True, "precopy", asked, seen_end, seen_end - asked,
                            time_source="harness")
    assert local.observed_window == (asked, seen_end)


def test_prober_stops_when_its_parent_dies(server: _Server, tmp_path: Path) -> None:
    out = tmp_path / "probe.log"
    code = (
        "import subprocess,sys,time;"
        f"p=subprocess.Popen([sys.executable,'-m','virtproof.instruments.prober','127.0.0.1','{server.port}','--out','{out}']);"
        "print(p.pid,flush=True);time.sleep(1)"
    )
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    pid = int(parent.stdout.split()[0])
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the orphaned prober kept running"


def test_locust_runs_in_its_own_process_and_is_bounded(server: _Server, tmp_path: Path) -> None:
    spec = LoadSpec(f"http://127.0.0.1:{server.port}", users=2, rate=40, run_time_s=30, max_requests=50)
    started = time.time()
    with LocustRun(spec, tmp_path / "locust") as run:
        run.wait_started(60)
        run.popen.wait(30)  # the request bound ends it long before the time bound
    records = run.records()
    assert 50 <= len(records) <= 60 and all(r.ok for r in records)
    assert run.history_csv.exists() and "Aggregated" in run.history_csv.read_text()
    assert (tmp_path / "locust" / "locust.json").exists()
    w = window(records, started, time.time())
    assert w.requests == len(records) and w.failures == 0 and w.p99_ms is not None and w.max_ms is not None


def test_locust_counts_failures_in_a_window(server: _Server, tmp_path: Path) -> None:
    spec = LoadSpec(f"http://127.0.0.1:{server.port}", users=2, rate=40, run_time_s=30)
    with LocustRun(spec, tmp_path / "locust") as run:
        run.wait_started(60)
        time.sleep(0.5)
        server.stop()
        down = time.time()
        time.sleep(0.5)
        up = time.time()
        server.start()
        time.sleep(0.5)
    records = run.stop()
    assert window(records, down + 0.05, up - 0.05).failures > 0
    assert window(records, up + 0.2, time.time()).failures == 0


def test_window_statistics() -> None:
    records = [RequestRecord(float(i), float(i), i != 3) for i in range(1, 101)]
    w = window(records, 1, 100)
    assert w.requests == 100 and w.failures == 1 and w.max_ms == 100
    assert w.p99_ms == 100  # nearest rank over the 99 answered: ceil(0.99 * 99) = 99th smallest
    assert window([RequestRecord(float(i), float(i), True) for i in range(1, 201)], 0, 300).p99_ms == 198


def test_harness_modules_do_not_import_locust_or_gevent() -> None:
    code = (
        "import sys, virtproof.instruments.load, virtproof.instruments.prober, virtproof.lab.qemu.migration,"
        " virtproof.lab.qemu.l2, virtproof.suites.engines.migration;"
        "bad=[m for m in ('locust','gevent') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
