"""Migration benchmark: a 256 MiB micro guest, idle and dirtying memory, moved between two nodes.

Prints total time, platform-reported downtime (qemu ``query-migrate``) and guest-observed
downtime (the ``virtproof.instruments.prober`` process, 100 Hz HTTP through the guest's stable L2 address) side
by side, and the ratio guest-observed / platform-reported. Numbers, not pass/fail.

    .venv/bin/python benchmarks/bench_migration.py [--moves 4] [--cases idle,dirty,dirty-postcopy,...]

Cases: idle, dirty (48 MiB rewritten flat out), dirty-bw32 (capped at 32 MiB/s),
dirty-autoconverge and dirty-postcopy (both with a 50 ms downtime limit).

The convergence map (``scenarios/convergence.yaml``: dirty rate x mode, each move verified) runs
through ``virtproof run`` and is printed from its results (mode x rate: converged, total s,
qemu and guest-observed downtime ms, MiB sent, the rate the guest achieved, and the predicted
and measured pre-copy boundaries); about 15 minutes under TCG:

    .venv/bin/python benchmarks/bench_migration.py --convergence [--scenario scenarios/convergence.yaml]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from virtproof.instruments.prober import ProbeLog, Prober
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.platform import MigrationPolicy, VMSpec
from virtproof.lab.qemu.lab import QemuLabHandle
from virtproof.reports.results import load_runs
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


ROOT = Path(__file__).resolve().parent.parent
MAP_COLUMNS = (("converged", "convergence.converged"), ("total s", "convergence.total_s"),
               ("downtime ms", "convergence.downtime_ms"), ("guest ms", "convergence.guest_downtime_ms"),
               ("MiB", "convergence.transferred_mib"), ("achieved MiB/s", "convergence.achieved_dirty_mibps"),
               ("predicted s", "convergence.predicted_total_s"))  # fmt: skip


def convergence_map(run_dir: Path) -> list[str]:
    """The map of one run's sweep, as printed lines: one per (mode, rate), then the boundaries."""
    df = load_runs([run_dir])

    def value(metric: str, mode: str, rate: str) -> float:
        rows = df[(df["metric"] == metric) & (df["label.dirty_mibps"] == rate)]
        rows = rows[rows["label.mode"] == mode]
        return float(rows["value"].max()) if len(rows) else math.nan  # guest ms: the worst prober path

    moves = df[df["metric"] == "convergence.converged"]
    pairs = sorted({(str(m), str(r)) for m, r in zip(moves["label.mode"], moves["label.dirty_mibps"], strict=True)},
                   key=lambda p: (p[0], float(p[1])))  # fmt: skip
    lines = [f"{'mode':<14} {'dirty MiB/s':>11} " + " ".join(f"{name:>14}" for name, _ in MAP_COLUMNS)]
    for mode, rate in pairs:
        cells = []
        for name, metric in MAP_COLUMNS:
            v = value(metric, "precopy" if metric.endswith("predicted_total_s") and mode == "precopy" else mode, rate)
            cells.append(f"{'yes' if v == 1 else 'no':>14}" if name == "converged" else f"{v:>14.1f}")
        lines.append(f"{mode:<14} {rate:>11} " + " ".join(cells))
    for metric in ("convergence.available_bandwidth_mibps", "convergence.predicted_boundary_mibps",
                   "convergence.measured_boundary_mibps"):  # fmt: skip
        for row in df[df["metric"] == metric].to_dict("records"):
            line = f"{metric}: {row['value']:.1f} MiB/s"
            if metric.endswith("measured_boundary_mibps"):
                line += f" ({row['label.mode']}, {row['label.bound']}, last converged {row['label.last_converged']})"
            lines.append(line)
    corrupted = df[(df["metric"] == "migration.corrupted_pages") & (df["label.pattern"] == "sweep")]
    lines.append(f"moves verified: {len(corrupted)}, corrupted pages: {int(corrupted['value'].sum())}")
    verify = df[df["metric"] == "migration.verify_s_per_gib"]["value"]
    if len(verify):
        lines.append(f"vp-memcheck verify: median {verify.median():.2f} s/GiB, max {verify.max():.2f} s/GiB")
    return lines


def run_convergence(scenario: Path) -> int:
    """``virtproof run`` the sweep scenario into a temporary results root and print its map."""
    with tempfile.TemporaryDirectory(prefix="vp-bench-conv-") as tmp:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "virtproof", "run", str(scenario), "--results", tmp],
                              cwd=ROOT, check=False)  # fmt: skip
        runs = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if not runs:
            print(f"virtproof run exited {proc.returncode} with no results", file=sys.stderr)
            return 2
        print(f"convergence map of {scenario} (virtproof run exit {proc.returncode}, "
              f"{time.monotonic() - started:.0f} s)")  # fmt: skip
        print("\n".join(convergence_map(runs[0])))
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=4, help="migrations per case (alternating nodes)")
    parser.add_argument("--cases", default="idle,dirty", help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--convergence", action="store_true", help="run the convergence map instead of the cases")
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios/convergence.yaml",
                        help="the sweep scenario of --convergence")  # fmt: skip
    args = parser.parse_args(argv)
    if args.convergence:
        return run_convergence(args.scenario)
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
