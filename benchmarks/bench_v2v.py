"""V2V benchmark, three parts (no number here is a pass/fail):

1. ``--sources``: ``virtproof premigrate`` (in-process) over built fixtures, several at once
   (bounded by cores); per source its verdict and inspect / convert / fix / boot seconds.
2. ``--throughput``: our conversion against a bare ``qemu-img convert`` of the same disk in the
   same run, on a disk large enough to measure (``--large-gib`` allocated, sparse elsewhere), as
   raw and as VMDK; the two commands alternate so machine noise hits both alike (goal: ratio
   ours/bare >= 0.95).
3. ``--fix-methods``: the VMware-like GRUB disks fixed by the native method and by virt-v2v,
   side by side: time, verdict and what each changed.

    .venv/bin/python benchmarks/bench_v2v.py [--sources micro-virtio:vmdk,grub-uefi-clean:raw,...]
        [--throughput [--large-gib 4] [--repeat 3]] [--fix-methods [--twins grub-bios-vmware,...]]
        [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

from virtproof.cli import main
from virtproof.premigrate.convert import MIB, qemu_img_convert
from virtproof.premigrate.fixtures.catalog import fixture_path
from virtproof.premigrate.imagefile import image_facts

DEFAULT = "micro-virtio:vmdk,grub-bios-clean:vmdk,grub-uefi-clean:raw,debian-ova:raw,windows-vmware:raw"
TWINS = "grub-bios-vmware:vmdk,grub-uefi-vmware:raw"


def _fixtures(spec: str) -> list[Path]:
    out = []
    for item in spec.split(","):
        name, _, fmt = item.partition(":")
        started = time.monotonic()
        out.append(fixture_path(name, fmt or "raw"))
        print(f"fixture {item}: {out[-1]} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return out


def _premigrate(argv: list[str]) -> tuple[int, dict[str, Any], float]:
    buffer = StringIO()
    started = time.monotonic()
    with redirect_stdout(buffer):
        code = main(["premigrate", *argv, "--json"])
    return code, json.loads(buffer.getvalue()), time.monotonic() - started


def bench_sources(spec: str, results: Path) -> None:
    sources = _fixtures(spec)
    code, out, wall = _premigrate([*map(str, sources), "--results", str(results)])
    print(f"\npremigrate exit {code}, {len(sources)} sources in {wall:.1f} s wall; run {out['run']}")
    header = f"{'source':<46} {'verdict':<11} {'inspect':>7} {'convert':>7} {'boot':>6}  stopped / reached"
    print(header + "\n" + "-" * len(header))
    for report in out["sources"]:
        t = report["timings_s"]
        boot = report["boot"] or {}
        print(
            f"{Path(report['source']).name[:46]:<46} {report['verdict']:<11} {t.get('inspect', 0):7.1f} "
            f"{t.get('convert', 0):7.2f} {t.get('boot', 0):6.1f}  {boot.get('stopped', 'no boot')}"
        )


def _large_raw(path: Path, allocated_gib: int) -> None:
    """``allocated_gib`` GiB of data in 64 MiB runs, every other 64 MiB left a hole (sparse)."""
    block = os.urandom(4 * MIB)
    run = 64 * MIB
    with open(path, "wb") as fh:
        fh.write(b"\0" * 510 + b"\x55\xaa")
        for i in range(allocated_gib * 1024 * MIB // run):
            fh.seek((2 * i + 1) * run)
            for _ in range(run // len(block)):
                fh.write(block)
        fh.truncate(max(fh.tell(), allocated_gib * 3 * 1024 * MIB))


def _bare(src: Path, fmt: str, dst: Path) -> float:
    started = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "qcow2", str(src), str(dst)], check=True)
    return time.monotonic() - started


def bench_throughput(allocated_gib: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vp-v2v-bench-", dir=os.environ.get("VIRTPROOF_BENCH_DIR")) as tmp:
        work = Path(tmp)
        raw = work / "large.raw"
        started = time.monotonic()
        _large_raw(raw, allocated_gib)
        vmdk = work / "large.vmdk"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)], check=True)
        print(f"\nlarge disk: {allocated_gib} GiB allocated, built in {time.monotonic() - started:.1f} s", flush=True)
        header = f"{'source':<12} {'virtual':>8} {'bare s':>7} {'ours s':>7} {'bare MiB/s':>10} {'ours MiB/s':>10}"
        header += f" {'ratio':>6}"
        print(header + "\n" + "-" * len(header))
        for src in (raw, vmdk):
            image = image_facts(src)
            bare_s, ours_s = [], []
            out = work / "out.qcow2"
            _bare(src, image.format, out)  # warm the page cache for both
            out.unlink()
            for i in range(repeat):
                order = ("bare", "ours") if i % 2 == 0 else ("ours", "bare")
                for which in order:
                    if which == "bare":
                        bare_s.append(_bare(src, image.format, out))
                    else:
                        ours_s.append(qemu_img_convert(src, image.format, out, "qcow2", image.virtual_size).seconds)
                    out.unlink()
            mib = image.virtual_size / MIB
            b, o = statistics.median(bare_s), statistics.median(ours_s)
            print(f"{src.name:<12} {mib / 1024:6.1f}Gi {b:7.2f} {o:7.2f} {mib / b:10.0f} {mib / o:10.0f} {b / o:6.3f}")
    print("medians of interleaved runs; MiB/s of virtual size; ratio = ours/bare throughput (bare seconds / ours)")


def bench_fix_methods(spec: str, results: Path) -> None:
    sources = _fixtures(spec)
    rows = []
    for method in ("native", "v2v"):
        with tempfile.TemporaryDirectory(prefix=f"vp-v2v-bench-{method}-") as outdir:
            code, out, wall = _premigrate(
                [*map(str, sources), "--fix", outdir, "--fix-method", method, "--no-bare", "--results", str(results)]
            )
        print(f"{method}: premigrate exit {code} in {wall:.1f} s wall; run {out['run']}", file=sys.stderr)
        rows += [(method, r) for r in out["sources"]]
    header = f"{'source':<40} {'method':<7} {'verdict':<11} {'fix s':>6} {'boot s':>6} {'total s':>7}  changes"
    print("\n" + header + "\n" + "-" * len(header))
    for method, report in sorted(rows, key=lambda r: (r[1]["source"], r[0])):
        t = report["timings_s"]
        total = sum(v for k, v in t.items() if k not in ("virt_v2v", "bare_convert"))
        changes = "; ".join(report["fixes"]) or (report["fix_error"] or "none")
        print(
            f"{Path(report['source']).name[:40]:<40} {method:<7} {report['verdict']:<11} {t.get('fix', 0):6.1f} "
            f"{t.get('boot', 0):6.1f} {total:7.1f}  {changes[:200]}"
        )


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sources", nargs="?", const=DEFAULT, default=None)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--large-gib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fix-methods", nargs="?", const=TWINS, default=None)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    if not (args.sources or args.throughput or args.fix_methods):
        args.sources, args.throughput, args.fix_methods = DEFAULT, True, TWINS
    if args.sources:
        bench_sources(args.sources, args.results)
    if args.throughput:
        bench_throughput(args.large_gib, args.repeat)
    if args.fix_methods:
        bench_fix_methods(args.fix_methods, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
