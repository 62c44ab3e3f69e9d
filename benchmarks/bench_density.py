"""Benchmark: the density scenario, and a table of what it found.

    .venv/bin/python benchmarks/bench_density.py [SCENARIO] [--results DIR]
    .venv/bin/python benchmarks/bench_density.py --run-dir results/<run-id>   # summarize only

Runs ``virtproof run SCENARIO --suite density`` (default ``scenarios/density.yaml``), then prints
the capacity and why the ramp stopped, and per step: guests running, p50/p95/max time to SSH,
failed and lost guests, host memory, host CPU while booting and when idle, the per-VM idle CPU,
the per-VM memory overhead, and the harness's own CPU (fraction of all cores, and share of the
host's busy CPU; the goal is under 10 %).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from virtproof.core import density_metrics as dm
from virtproof.instruments.quantiles import linear as percentile
from virtproof.reports.results import Sample, read_samples

ROOT = Path(__file__).resolve().parents[1]


def _by_step(samples: list[Sample], metric: str) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in samples:
        if s.metric == metric and "step" in s.labels:
            out[(s.labels.get("ramp", "0"), int(s.labels["step"]))].append(s.value)
    return out


def summarize(run_dir: Path) -> str:
    samples = read_samples(run_dir).samples
    if not samples:
        return f"{run_dir}: no samples"
    metrics = {
        name: _by_step(samples, name)
        for name in (
            dm.TIME_TO_SSH_S, dm.BOOT_FAILED, dm.VMS_RUNNING, dm.LOST_VMS, dm.HOST_MEMORY_FRACTION,
            dm.HOST_CPU_FRACTION, dm.IDLE_HOST_CPU_FRACTION, dm.IDLE_VM_CPU_FRACTION, dm.VM_OVERHEAD_MIB,
            dm.VM_OVERHEAD_PRIVATE_MIB, dm.QEMU_RSS_MIB, dm.HARNESS_CPU_FRACTION, dm.HARNESS_CPU_SHARE, dm.HOST_LOAD1,
        )
    }

    def one(name: str, key: tuple[str, int], fmt: str = "{:.2f}") -> str:
        values = metrics[name].get(key)
        return fmt.format(statistics.mean(values)) if values else "-"

    lines = [f"run {run_dir}"]
    header = (
        f"{'ramp':>4} {'step':>4} {'vms':>4} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'fail':>4} {'lost':>4} "
        f"{'mem':>5} {'cpu boot':>8} {'cpu idle':>8} {'vm idle':>7} {'load1':>5} {'ovh MiB':>7} {'priv MiB':>8} "
        f"{'rss MiB':>7} {'harness':>7} {'h/busy':>6}"
    )
    lines.append(header)
    keys = sorted(metrics[dm.VMS_RUNNING])
    for key in keys:
        times = metrics[dm.TIME_TO_SSH_S].get(key, []) + [float("inf")] * len(metrics[dm.BOOT_FAILED].get(key, []))
        lines.append(
            f"{key[0]:>4} {key[1]:>4} {one(dm.VMS_RUNNING, key, '{:.0f}'):>4} {percentile(times, 50):6.1f} "
            f"{percentile(times, 95):6.1f} {max(times) if times else float('nan'):6.1f} "
            f"{len(metrics[dm.BOOT_FAILED].get(key, [])):>4} {one(dm.LOST_VMS, key, '{:.0f}'):>4} "
            f"{one(dm.HOST_MEMORY_FRACTION, key):>5} {one(dm.HOST_CPU_FRACTION, key):>8} "
            f"{one(dm.IDLE_HOST_CPU_FRACTION, key):>8} {one(dm.IDLE_VM_CPU_FRACTION, key, '{:.3f}'):>7} "
            f"{one(dm.HOST_LOAD1, key, '{:.1f}'):>5} {one(dm.VM_OVERHEAD_MIB, key, '{:.0f}'):>7} "
            f"{one(dm.VM_OVERHEAD_PRIVATE_MIB, key, '{:.0f}'):>8} {one(dm.QEMU_RSS_MIB, key, '{:.0f}'):>7} "
            f"{one(dm.HARNESS_CPU_FRACTION, key, '{:.1%}'):>7} {one(dm.HARNESS_CPU_SHARE, key, '{:.1%}'):>6}"
        )
    for s in samples:
        if s.metric == dm.PRIMER_TIME_TO_SSH_S:
            lines.append(f"ramp {s.labels.get('ramp', '0')}: primer guest reached SSH in {s.value:.1f} s")
        if s.metric == dm.STOP_REASON:
            lines.append(
                f"ramp {s.labels.get('ramp', '0')}: stopped with {s.value:.0f} guests running: "
                f"{s.labels.get('reason')} ({s.labels.get('detail', '')})"
            )
        if s.metric == dm.CAPACITY_VMS:
            lines.append(f"ramp {s.labels.get('ramp', '0')}: CAPACITY {s.value:.0f} guests")
    harness = [v for vals in metrics[dm.HARNESS_CPU_FRACTION].values() for v in vals]
    if harness:
        lines.append(f"harness CPU: max {max(harness):.1%} of all cores per step (goal < 10 %)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=ROOT / "scenarios" / "density.yaml")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--run-dir", type=Path, help="summarize this run instead of running the scenario")
    args = parser.parse_args()
    run_dir = args.run_dir
    if run_dir is None:
        cmd = [sys.executable, "-m", "virtproof", "run", str(args.scenario), "--suite", "density",
               "--results", str(args.results)]
        print("+", " ".join(cmd), flush=True)
        env = {**os.environ, "PYTEST_ADDOPTS": "-s"}  # show the ramp's progress as it happens
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=False, env=env)
        sys.stdout.write(proc.stdout)
        last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        if not last or not Path(last[0]).is_dir():
            print(f"virtproof run exited {proc.returncode} without a run directory", file=sys.stderr)
            return 1
        run_dir = Path(last[0])
    print(summarize(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
