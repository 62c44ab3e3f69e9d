"""V2V benchmark: per source, inspect / convert / fix / boot seconds, and the conversion's
MiB/s against a bare ``qemu-img convert`` of the same file in the same run (goal: within 5 %).

Runs ``virtproof premigrate`` (in-process) over built fixtures, several sources at once
(bounded by cores), then alternates extra bare and harness conversions of each source so
machine noise hits both alike, and prints a table. No number here is a pass/fail.

    .venv/bin/python benchmarks/bench_v2v.py [--fixtures micro-virtio:vmdk,debian-clean:vhdx,...]
                                             [--repeat N] [--fix] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from virtproof.cli import main
from virtproof.premigrate.convert import bare_convert_seconds, qemu_img_convert
from virtproof.premigrate.fixtures.catalog import fixture_path
from virtproof.premigrate.imagefile import image_facts

DEFAULT = "micro-virtio:vmdk,micro-novirtio:vhdx,debian-clean:vmdk,debian-vmware:vhdx,debian-ova:raw"


def _alternate(path: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of ``repeat`` bare and ``repeat`` harness conversions, interleaved."""
    image = image_facts(path)
    bare, ours = [], []
    with tempfile.TemporaryDirectory(prefix="vp-v2v-bench-") as tmp:
        scratch = Path(tmp)
        for _ in range(repeat):
            bare.append(bare_convert_seconds(path, image.format, "qcow2", scratch))
            out = scratch / "ours.qcow2"
            ours.append(qemu_img_convert(path, image.format, out, "qcow2", image.virtual_size).seconds)
            out.unlink()
    return statistics.median(bare), statistics.median(ours)


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fixtures", default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=5, help="extra interleaved conversions per source")
    parser.add_argument("--fix", action="store_true", help="also --fix (native) into a temp dir")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    sources = []
    for item in args.fixtures.split(","):
        name, _, fmt = item.partition(":")
        started = time.monotonic()
        sources.append(fixture_path(name, fmt or "raw"))
        print(f"fixture {item}: {sources[-1]} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vp-v2v-bench-fix-") as fixdir:
        argv = ["premigrate", *map(str, sources), "--json", "--results", str(args.results)]
        if args.fix:
            argv += ["--fix", fixdir]
        buffer = StringIO()
        started = time.monotonic()
        with redirect_stdout(buffer):
            code = main(argv)
        wall = time.monotonic() - started
    out = json.loads(buffer.getvalue())
    print(f"premigrate exit {code}, {len(sources)} sources in {wall:.1f} s wall; run {out['run']}")
    header = (
        f"{'source':<44} {'verdict':<11} {'inspect':>7} {'convert':>7} {'fix':>6} {'boot':>6} "
        f"{'MiB/s':>7} {'bare':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for report in out["sources"]:
        t = report["timings_s"]
        source = Path(report["source"])
        if report["image"] is None or "convert" not in t:
            print(f"{source.name[:44]:<44} {report['verdict']:<11} {t.get('inspect', 0):7.1f}   (not converted)")
            continue
        if report["kind"] == "disk":
            bare_s, ours_s = _alternate(source, args.repeat)
        else:  # the OVA's disk was extracted into a scratch dir: use the run's own pair
            bare_s, ours_s = t.get("bare_convert", 0.0), t["convert"]
        mib = report["image"]["virtual_size"] / 1024**2
        ours, bare = mib / ours_s, mib / bare_s if bare_s else 0.0
        ratio = ours / bare if bare else 0.0
        print(
            f"{source.name[:44]:<44} {report['verdict']:<11} {t.get('inspect', 0):7.1f} {t['convert']:7.2f} "
            f"{t.get('fix', 0):6.1f} {t.get('boot', 0):6.1f} {ours:7.0f} {bare:7.0f} {ratio:6.3f}"
        )
    print("MiB/s: virtual MiB per second, medians of interleaved conversions to qcow2; ratio = ours / bare.")
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
