"""Migration benchmark: a 256 MiB micro guest, idle and dirtying memory, moved between two nodes.

Prints total time, platform-reported downtime (qemu ``query-migrate``) and guest-observed
downtime (the ``virtproof.instruments.prober`` process, 100 Hz HTTP through the guest's stable L2 address) side
by side, and the ratio guest-observed / platform-reported. Numbers, not pass/fail.

    .venv/bin/python benchmarks/bench_migration.py [--moves 4] [--cases idle,dirty,dirty-postcopy,...]

Cases: idle, dirty (48 MiB rewritten flat out), dirty-bw32 (capped at 32 MiB/s),
dirty-autoconverge and dirty-postcopy (both with a 50 ms downtime limit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from virtproof.instruments.prober import ProbeLog, Prober
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.platform import MigrationPolicy, VMSpec
from virtproof.lab.qemu.lab import QemuLabHandle
from virtproof.scenarios.model import Guest, QemuLab

CASES: dict[str, tuple[int, MigrationPolicy]] = {
    "idle": (0, MigrationPolicy()),
    "dirty": (48, MigrationPolicy()),
    "dirty-bw32": (48, MigrationPolicy(bandwidth_mibps=32, timeout_s=180)),
    "dirty-autoconverge": (48, MigrationPolicy("auto_converge", downtime_limit_ms=50, timeout_s=180)),
    "dirty-postcopy": (48, MigrationPolicy("postcopy", downtime_limit_ms=50)),
}


@dataclass(frozen=True)
class Row:
    case: str
    ok: int
    moves: int
    total_s: float
    downtime_ms: float
    guest_ms: float

    @property
    def ratio(self) -> float:
        return self.guest_ms / self.downtime_ms if self.downtime_ms else float("nan")


def run_case(platform: object, name: str, dirty_mib: int, policy: MigrationPolicy, moves: int, out: Path) -> Row:
    from virtproof.lab.qemu.platform import QemuPlatform

    assert isinstance(platform, QemuPlatform)
    vm = platform.create_vm(VMSpec(f"bench-{name}", memory_mib=256, node="node0", network="l2"))
    try:
        platform.wait_running(vm, 60)
        wait_for_banner(vm.ssh_endpoint(), 120, alive=vm.alive)
        access = platform.guest_access("micro")
        if dirty_mib:
            with GuestSession(vm.ssh_endpoint(), access) as session:
                session.run(f"setsid vp-dirty {dirty_mib} 0 >/dev/null 2>&1 </dev/null &", check=True)
        prober = Prober(vm.http_endpoint().host, vm.http_endpoint().port, out / f"{name}.probe")
        results = []
        try:
            prober.wait_answering(30)
            time.sleep(1)
            for i in range(moves):
                results.append(platform.migrate(vm, "node1" if i % 2 == 0 else "node0", policy))
                time.sleep(1.5)
        finally:
            log = prober.stop()
        done = [r for r in results if r.ok]
        gaps = [g.ms for r in done if (g := ProbeLog.longest_gap(log, r.started, r.finished)) is not None]
        for r in results:
            if not r.ok:
                print(f"  {name}: {r.source}->{r.target} failed: {r.error}", file=sys.stderr)
        return Row(
            name,
            len(done),
            len(results),
            statistics.median([r.total_s for r in done]) if done else float("nan"),
            statistics.median([r.downtime_ms or 0.0 for r in done]) if done else float("nan"),
            statistics.median(gaps) if gaps else float("nan"),
        )
    finally:
        platform.delete_vm(vm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=4, help="migrations per case (alternating nodes)")
    parser.add_argument("--cases", default="idle,dirty", help=f"comma-separated, of: {', '.join(CASES)}")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    handle = QemuLabHandle(QemuLab(kind="qemu", nodes=2), Guest(), f"bench-mig-{int(time.time())}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vp-bench-mig-") as tmp:
        try:
            platform = handle.up()
            try:
                for case in cases:
                    dirty, policy = CASES[case]
                    rows.append(run_case(platform, case, dirty, policy, args.moves, Path(tmp)))
            finally:
                platform.close()
        finally:
            handle.down()
    print(f"migration of a 256 MiB micro guest, accel {getattr(platform, 'accel', '?')}, medians of the moves")
    print(f"{'case':<20} {'ok':>5} {'total s':>8} {'qemu downtime ms':>17} {'guest-observed ms':>18} {'ratio':>6}")
    for r in rows:
        print(
            f"{r.case:<20} {r.ok:>2}/{r.moves:<2} {r.total_s:>8.2f} {r.downtime_ms:>17.1f} {r.guest_ms:>18.1f} "
            f"{r.ratio:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
