"""``virtproof premigrate SOURCE...``: will these VMs survive the move to virtio?

For each source disk (raw, qcow2, VMDK, VHD, VHDX), OVA or VMX: inspect it without booting,
convert it (and with ``--fix OUTDIR`` repair what the findings call for, on a copy), boot
the result on the devices KubeVirt would give it, and say ready / needs-fixes / blocked.
Samples go to a run directory; a verdict JSON per source goes to ``<run>/v2v/``.
Exit code: 0 when every source is ready, 1 otherwise, 2 for bad input (one line), 3 when this
host cannot do the work (no guestfs binding, qemu or TCG): never a verdict on the VMs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from virtproof.core.errors import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, UsageError
from virtproof.lab.kubevirt.schema import bundled_releases
from virtproof.premigrate.bootproof import stop_all
from virtproof.premigrate.cancel import CANCEL
from virtproof.premigrate.gfs import guestfs_environment
from virtproof.premigrate.host import check_host
from virtproof.premigrate.imagefile import BadSource
from virtproof.premigrate.pipeline import Options, SourceReport, precheck, validate_source
from virtproof.premigrate.record import record_samples, write_verdict
from virtproof.reports.results import RunDirectory, new_run_id
from virtproof.scenarios.kubevirt import KUBEVIRT_VERSION


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "premigrate",
        help="inspect, convert and boot-prove VM disks before a move",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="disk image, OVA or .vmx")
    p.add_argument("--target", choices=("qemu", "kubevirt"), default="qemu")
    p.add_argument("--fix", type=Path, metavar="OUTDIR", help="write converted (and fixed) disks here")
    p.add_argument(
        "--fix-method",
        choices=("native", "v2v"),
        default="native",
        help="native: targeted edits and a chroot initramfs rebuild (fast); v2v: virt-v2v -o local",
    )
    p.add_argument("--bus", choices=("virtio", "scsi"), default="virtio", help="target disk bus")
    p.add_argument("--keep-mac", action="store_true", help="keep the OVF's MAC in the generated VM")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--jobs", type=int, default=0, help="sources in parallel (default: CPU cores)")
    p.add_argument("--boot-timeout", type=float, default=300.0, metavar="S")
    p.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest memory for the boot proof")
    p.add_argument("--no-bare", action="store_true", help="skip the bare qemu-img convert yardstick")
    p.add_argument(
        "--kubevirt-version",
        choices=bundled_releases("kubevirt"),
        default=KUBEVIRT_VERSION,
        help=f"KubeVirt release whose schema the generated manifests must match (default {KUBEVIRT_VERSION})",
    )
    p.set_defaults(func=run)


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for tool, argv in (("qemu-img", ["qemu-img", "--version"]), ("virt-v2v", ["virt-v2v", "--version"])):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            out[tool] = (proc.stdout.splitlines() or [""])[0]
        except (FileNotFoundError, subprocess.TimeoutExpired):
            out[tool] = "absent"
    return out


def _summary_line(report: SourceReport) -> str:
    t = report.timings
    parts = [f"{report.verdict:<11} {report.source}"]
    stats = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k in ("inspect", "convert", "fix", "boot"))
    if report.conversion:
        stats += f", {report.conversion.mib_per_s:.0f} MiB/s"
    if stats:
        parts.append(f"  ({stats})")
    text = "".join(parts)
    for reason in report.decision.reasons if report.decision else ():
        text += f"\n    - {reason}"
    if report.boot and report.boot.screen_png and report.verdict != "ready":
        text += f"\n    last screen: {report.boot.screen_png}"
    for finding in report.findings:
        if finding.severity != "info":
            text += f"\n    [{finding.severity}] {finding.code}: {finding.message}"
    return text


def run(args: argparse.Namespace) -> int:
    guestfs_environment()
    check_host()
    kinds: dict[Path, str] = {}
    for source in args.sources:
        try:
            kinds[source] = precheck(source)
        except BadSource as exc:
            raise UsageError(str(exc)) from None
    if len({s.resolve() for s in args.sources}) != len(args.sources):
        raise UsageError("a source is given twice")
    names = [s.name.rsplit(".", 1)[0].lower() for s in args.sources]
    if len(set(names)) != len(names):
        raise UsageError("two sources share a name; rename one (outputs are named after the source)")
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (auto) or more")
    if args.fix:
        args.fix.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    run_dir = RunDirectory.create(
        args.results,
        run_id,
        {
            "command": "premigrate",
            "sources": [str(s) for s in args.sources],
            "target": args.target,
            "fix": str(args.fix) if args.fix else None,
            "fix_method": args.fix_method,
            "bus": args.bus,
            "platform": "qemu",
            "versions": _versions(),
            "host": {"cores": os.cpu_count()},
        },
    )
    verdict_dir = run_dir.path / "v2v"
    options = Options(
        target=args.target,
        bus=args.bus,
        fix_dir=args.fix.resolve() if args.fix else None,
        fix_method=args.fix_method,
        keep_mac=args.keep_mac,
        boot_timeout_s=args.boot_timeout,
        memory_mib=args.memory,
        measure_bare=not args.no_bare,
        manifest_dir=verdict_dir,
        kubevirt_release=args.kubevirt_version,
        evidence_dir=verdict_dir,
    )
    verdict_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"vp-v2v-{run_id}-"))
    jobs = args.jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(args.sources), os.cpu_count() or 1))

    def one(index: int, source: Path) -> SourceReport:
        workdir = scratch / f"s{index}"
        workdir.mkdir()
        try:
            report = validate_source(
                source,
                workdir,
                options,
                progress=lambda m: print(f"premigrate: {m}", file=sys.stderr, flush=True),
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        record_samples(run_dir.sink, report, args.target)
        write_verdict(report, verdict_dir)
        if options.fix_dir:
            write_verdict(report, options.fix_dir)
        return report

    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)
        CANCEL.set()
        stop_all()
        raise KeyboardInterrupt(f"signal {signum}")

    CANCEL.clear()
    previous = signal.signal(signal.SIGTERM, on_signal)
    status = "failed"
    interrupted = False
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="premigrate") as pool:
            futures = [pool.submit(one, i, s) for i, s in enumerate(args.sources)]
            reports = [f.result() for f in futures]
        ok = all(r.verdict == "ready" for r in reports)
        status = "passed" if ok else "failed"
    except BadSource as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        CANCEL.set()
        stop_all()
        status = "incomplete"
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
        run_dir.finish(status)  # type: ignore[arg-type]
    if interrupted:
        name = "SIGTERM" if signal.SIGTERM in signals else "SIGINT"
        print(f"premigrate: interrupted by {name}; nothing left running; run: {run_dir.path}", file=sys.stderr)
        return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
    if args.json:
        print(json.dumps({"run": str(run_dir.path), "sources": [r.to_dict() for r in reports]}, indent=2, default=str))
    else:
        for report in reports:
            print(_summary_line(report))
        print(f"run: {run_dir.path}")
    return EXIT_OK if ok else EXIT_FAILED
