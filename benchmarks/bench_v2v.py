"""V2V benchmark, three parts (no number here is a pass/fail):

1. ``--sources``: ``virtproof premigrate`` (in-process) over built fixtures, several at once
   (bounded by cores); per source its verdict and inspect / convert / fix / boot seconds.
2. ``--throughput``: our conversion against a bare ``qemu-img convert`` of the same disk in the
   same run, on a disk large enough to measure (``--large-gib`` allocated, sparse elsewhere), as
   raw and as VMDK; the two commands alternate so machine noise hits both alike (goal: ratio
   ours/bare >= 0.95).
3. ``--fix-methods``: the VMware-like GRUB disks fixed by the native method and by virt-v2v,
   side by side: time, verdict and what each changed.
4. ``--inspect``: where inspection's time goes, one source after the other (nothing else of
   ours runs): the appliance launch, then each libguestfs call counted and timed, and the whole
   ``inspect_disk`` as the pipeline runs it.

    .venv/bin/python benchmarks/bench_v2v.py [--sources micro-virtio:vmdk,grub-uefi-clean:raw,...]
        [--throughput [--large-gib 4] [--repeat 3]] [--fix-methods [--twins grub-bios-vmware,...]]
        [--inspect [micro-virtio:vmdk,grub-bios-clean:vmdk,...] [--repeat 3]] [--results DIR]
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
from contextlib import ExitStack, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

from virtproof.cli import main
from virtproof.premigrate.convert import MIB, convert_argv, qemu_img_convert
from virtproof.premigrate.fixtures.catalog import fixture_path
from virtproof.premigrate.gfs import open_guestfs
from virtproof.premigrate.imagefile import image_facts
from virtproof.premigrate.inspect import collect_guest_facts, inspect_disk

DEFAULT = "micro-virtio:vmdk,grub-bios-clean:vmdk,grub-uefi-clean:raw,debian-ova:raw,windows-vmware:raw"
TWINS = "grub-bios-vmware:vmdk,grub-uefi-vmware:raw"
INSPECT = "micro-virtio:vmdk,grub-bios-clean:vmdk,grub-uefi-vmware:raw"


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
    header = f"{'source':<46} {'verdict':<11} {'inspect':>7} {'convert':>7} {'bare':>6} {'ratio':>5} {'boot':>6}"
    print(header + "  stopped / reached\n" + "-" * (len(header) + 20))
    for report in out["sources"]:
        t = report["timings_s"]
        boot = report["boot"] or {}
        # The run's own yardstick: bare qemu-img convert of the same file, same flags, this run.
        ours, bare = report["convert_mib_s"], report["bare_convert_mib_s"]
        ratio = f"{ours / bare:5.2f}" if ours and bare else f"{'-':>5}"
        print(
            f"{Path(report['source']).name[:46]:<46} {report['verdict']:<11} {t.get('inspect', 0):7.1f} "
            f"{t.get('convert', 0):7.2f} {t.get('bare_convert', 0):6.2f} {ratio} {t.get('boot', 0):6.1f}  "
            f"{boot.get('stopped', 'no boot')}"
        )
    print("seconds; ratio = ours/bare throughput from the run's own samples (v2v.convert_vs_bare_pct)")


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
    """The yardstick: the very command ours runs (same flags, formats and file), run plainly."""
    started = time.monotonic()
    subprocess.run(convert_argv(src, fmt, dst, "qcow2"), check=True)
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
        samples: list[str] = []
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
            listed = [" ".join(f"{x:.2f}" for x in xs) for xs in (bare_s, ours_s)]
            samples.append(f"{src.name}: bare {listed[0]} s; ours {listed[1]} s")
    print("medians of interleaved runs; MiB/s of virtual size; ratio = ours/bare throughput (bare seconds / ours)")
    print("both run: " + " ".join(convert_argv(Path("SRC"), "FMT", Path("DST"), "qcow2")))
    print("samples, in run order:\n  " + "\n  ".join(samples))


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


class _CountedHandle:
    """A libguestfs handle that counts and times every call made through it."""

    def __init__(self, g: Any) -> None:
        self._g = g
        self.calls: dict[str, list[float]] = {}
        self.each: list[tuple[float, str]] = []  # (seconds, call with its first argument)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._g, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                took = time.monotonic() - started
                self.calls.setdefault(name, []).append(took)
                self.each.append((took, f"{name}({str(args[0])[:40] if args else ''})"))

        return timed


def _counted_facts(g: Any) -> tuple[_CountedHandle, float]:
    counted = _CountedHandle(g)
    started = time.monotonic()
    collect_guest_facts(counted)
    return counted, time.monotonic() - started


def bench_inspect(spec: str, repeat: int) -> None:
    """Per source: appliance launch, the facts (every libguestfs call counted), the handle's close,
    and ``inspect_disk`` whole, as the pipeline calls it; one source at a time."""
    sources = _fixtures(spec)
    load = os.getloadavg()[0]
    header = f"{'source':<40} {'launch':>6} {'facts':>6} {'close':>6} {'calls':>5} {'inspect_disk':>12}"
    print(f"\nload average at start {load:.1f}\n{header}\n" + "-" * len(header))
    slowest: dict[str, _CountedHandle] = {}
    for src in sources:
        image = image_facts(src)
        for _ in range(repeat):
            with ExitStack() as stack:
                started = time.monotonic()
                g = stack.enter_context(open_guestfs([(src, image.format, True)]))
                launch = time.monotonic() - started
                counted, facts_s = _counted_facts(g)
                closing = time.monotonic()
            close_s = time.monotonic() - closing
            whole = inspect_disk(image).seconds
            calls = sum(len(v) for v in counted.calls.values())
            print(
                f"{src.name[:40]:<40} {launch:6.1f} {facts_s:6.1f} {close_s:6.1f} {calls:5d} {whole:12.1f}", flush=True
            )
            slowest[src.name] = counted
    for name, counted in slowest.items():
        top = sorted(counted.calls.items(), key=lambda kv: -sum(kv[1]))[:10]
        print(f"\n{name}: the libguestfs calls that took longest (last run), and the slowest single ones")
        for call, times in top:
            print(f"  {call:<28} x{len(times):<4} {sum(times):6.2f} s")
        print("  " + ", ".join(f"{what} {took:.2f}" for took, what in sorted(counted.each, reverse=True)[:8]))
    print(f"load average at end {os.getloadavg()[0]:.1f}; seconds; inspect_disk = launch + facts + close")


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sources", nargs="?", const=DEFAULT, default=None)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--large-gib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fix-methods", nargs="?", const=TWINS, default=None)
    parser.add_argument("--inspect", nargs="?", const=INSPECT, default=None)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    if args.inspect:
        bench_inspect(args.inspect, args.repeat)
        if not (args.sources or args.throughput or args.fix_methods):
            return 0
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
