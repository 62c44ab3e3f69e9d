"""Benchmark: 10 generated runs, 1,000,000 samples in all, rendered as one comparison.

    .venv/bin/python benchmarks/bench_report.py [--runs 10] [--samples 1000000] [--keep DIR]

Generates the runs (not timed), then renders the comparison in a fresh child process and
prints its wall time and peak RSS (goal: under 15 s and 2 GiB on the 2-core CI machine);
also times finalize_run (stats, gates, report.html) on one of the runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from virtproof.core import density_metrics
from virtproof.reports.results import RunDirectory

# metric, unit, share of samples, label kind
METRICS = (
    ("boot.time_to_running_s", "s", 0.15, "vm"),
    ("boot.time_to_ssh_s", "s", 0.25, "vm"),
    ("boot.time_to_command_s", "s", 0.15, "vm"),
    ("migration.total_s", "s", 0.1, "policy"),
    ("migration.downtime_ms", "ms", 0.1, "policy"),
    ("migration.guest_downtime_ms", "ms", 0.1, "policy"),
    (density_metrics.TIME_TO_SSH_S, "s", 0.1, "density"),
    ("v2v.convert_throughput_mibps", "MiB/s", 0.05, "disk"),
)


def generate(root: Path, runs: int, total: int) -> list[Path]:
    rng = np.random.default_rng(42)
    per_run = total // runs
    dirs = []
    for r in range(runs):
        run = RunDirectory.create(root, f"run-{r:02d}", {
            "scenario": {"name": "bench"},
            "platform": {"name": f"platform-{r % 3}", "capabilities": ["boot", "live_migration"]},
            "host": {"hostname": f"host-{r}"}, "versions": {"qemu": "7.2"},
        })
        scale = 1.0 + 0.05 * r
        with open(run.path / "samples.jsonl", "w", encoding="utf-8") as fh:
            for metric, unit, share, kind in METRICS:
                n = int(per_run * share)
                values = rng.gamma(4.0, 0.5, n) * scale
                for i in range(n):
                    if kind == "vm":
                        labels = {"vm": f"vm-{i}", "node": f"node-{i % 4}"}
                    elif kind == "policy":
                        labels = {"policy": ("precopy", "postcopy", "auto-converge")[i % 3]}
                    elif kind == "density":
                        labels = {"vms_running": str(1 + i % 32), "vm": f"d-{i}"}
                    else:
                        labels = {"disk": f"disk-{i % 5}"}
                    fh.write(json.dumps({"metric": metric, "value": float(values[i]), "unit": unit,
                                         "labels": labels, "timestamp": 1.7e9 + i},
                                        sort_keys=True, separators=(",", ":")) + "\n")
        run.finish("passed")
        dirs.append(run.path)
    return dirs


def render(out: Path, dirs: list[Path]) -> None:
    from virtproof.reports.compare import render_comparison

    start = time.perf_counter()
    html = render_comparison(dirs, out)
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": "comparison", "runs": len(dirs), "seconds": round(elapsed, 2),
                      "peak_rss_mib": round(peak_mib), "html_bytes": html.stat().st_size}))


def finalize(run_dir: Path) -> None:
    from virtproof.reports.finalize import finalize_run
    from virtproof.scenarios.model import SLO

    start = time.perf_counter()
    result = finalize_run(run_dir, [SLO(metric="boot.time_to_ssh_s", stat="p95", max=60)])
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": "finalize one run", "seconds": round(elapsed, 2), "peak_rss_mib": round(peak_mib),
                      "gates_passed": result.gates_passed}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="generate into this directory and keep it")
    parser.add_argument("--child", nargs="+", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-finalize", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        render(args.child[0], args.child[1:])
        return 0
    if args.child_finalize:
        finalize(args.child_finalize)
        return 0
    with tempfile.TemporaryDirectory(prefix="vp-bench-") as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        dirs = generate(root, args.runs, args.samples)
        print(json.dumps({"what": "generate (not part of the goal)", "samples": args.samples,
                          "seconds": round(time.perf_counter() - start, 2)}))
        me = [sys.executable, str(Path(__file__).resolve())]
        subprocess.run([*me, "--child", str(root / "comparison"), *map(str, dirs)], check=True)
        subprocess.run([*me, "--child-finalize", str(dirs[0])], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
