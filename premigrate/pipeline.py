"""One source through the three stages: inspect, convert (and fix), prove it boots.

``validate_source`` never writes to the source (opened read-only; its sha256 is compared at
the end) and keeps only what ``--fix OUTDIR`` asks for; scratch files live in ``workdir``,
which the caller removes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from virtproof.lab.kubevirt.schema import load_schemas
from virtproof.premigrate import ova as ova_mod
from virtproof.premigrate.bootproof import BootProof, boot_and_follow, prepare_overlay
from virtproof.premigrate.checks import DiskBus, Target, findings_for
from virtproof.premigrate.convert import (
    Conversion,
    ConversionError,
    bare_convert_seconds,
    qemu_img_convert,
    virt_v2v_local,
)
from virtproof.premigrate.findings import Finding, sort_findings
from virtproof.premigrate.fix import FixError, FixReport, apply_fixes
from virtproof.premigrate.imagefile import BadSource, ImageFacts, image_facts, sha256_file
from virtproof.premigrate.inspect import Inspection, inspect_disk
from virtproof.premigrate.manifests import VmShape, build_manifests, k8s_name, write_manifests
from virtproof.premigrate.verdict import Decision, blocked_by_inspection, decide
from virtproof.scenarios.kubevirt import KUBEVIRT_VERSION

FixMethod = Literal["native", "v2v"]


@dataclass(frozen=True)
class Options:
    target: Target = "qemu"
    bus: DiskBus = "virtio"
    fix_dir: Path | None = None
    fix_method: FixMethod = "native"
    keep_mac: bool = False
    boot_timeout_s: float = 300.0
    memory_mib: int = 1024
    measure_bare: bool = True
    manifest_dir: Path | None = None  # where kubevirt manifests go without --fix
    kubevirt_release: str = KUBEVIRT_VERSION  # the manifests are validated against this release's schema


@dataclass
class SourceReport:
    source: Path
    name: str
    kind: Literal["disk", "ova"]
    sha256_before: str = ""
    sha256_after: str = ""
    image: ImageFacts | None = None
    ovf: ova_mod.OvfInfo | None = None
    inspection: Inspection | None = None
    findings: list[Finding] = field(default_factory=list)
    conversion: Conversion | None = None
    bare_convert_s: float | None = None
    fix: FixReport | None = None
    fix_error: str | None = None
    v2v_s: float | None = None
    output: Path | None = None
    manifest: Path | None = None
    boot: BootProof | None = None
    decision: Decision | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.decision.verdict if self.decision else "blocked"

    def to_dict(self) -> dict[str, Any]:
        boot = self.boot
        guest = self.inspection.guest if self.inspection else None
        return {
            "source": str(self.source),
            "name": self.name,
            "kind": self.kind,
            "verdict": self.verdict,
            "reasons": list(self.decision.reasons) if self.decision else [],
            "source_sha256": self.sha256_before,
            "source_unchanged": self.sha256_before == self.sha256_after,
            "image": None
            if self.image is None
            else {
                "format": self.image.format,
                "subformat": self.image.subformat,
                "virtual_size": self.image.virtual_size,
                "actual_size": self.image.actual_size,
                "backing_chain": list(self.image.backing_chain),
                "encrypted": self.image.encrypted,
            },
            "ovf": None
            if self.ovf is None
            else {
                "name": self.ovf.name,
                "cpus": self.ovf.cpus,
                "memory_mib": self.ovf.memory_mib,
                "firmware": self.ovf.firmware,
                "disks": [
                    {"file": d.file, "capacity": d.capacity_bytes, "controller": d.controller} for d in self.ovf.disks
                ],
                "nics": [{"model": n.model, "mac": n.mac, "network": n.network} for n in self.ovf.nics],
            },
            "guest": None
            if guest is None
            else {
                "os": guest.os_type,
                "distro": guest.distro,
                "product": guest.product,
                "hostname": guest.hostname,
                "kernel": guest.kernel_version,
                "firmware": guest.firmware,
                "init": guest.init_system,
                "modules": guest.modules,
                "initramfs": guest.initramfs_path,
                "initramfs_has": sorted(m for m in guest.initramfs_modules if m.startswith("virtio")),
                "fstab": [e.spec + " " + e.mountpoint for e in guest.fstab],
                "nics": [{"path": n.path, "tool": n.tool, "name": n.name, "mac": n.mac} for n in guest.nics],
                "agents": sorted(guest.agents),
                "checksums": dict(guest.checksums),
            },
            "findings": [f.to_dict() for f in self.findings],
            "fixes": list(self.fix.applied) if self.fix else [],
            "fix_error": self.fix_error,
            "output": str(self.output) if self.output else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "boot": None
            if boot is None
            else {
                "booted": boot.booted,
                "reachable": boot.reachable,
                "failure": boot.failure,
                "milestones_s": boot.milestones,
                "ssh_banner": boot.ssh_banner,
                "network": boot.network,
                "network_down": boot.network_down,
                "probe": boot.probe_installed,
                "checksums_ok": list(boot.checksums_ok),
                "checksums_bad": list(boot.checksums_bad),
                "checksums_missing": list(boot.checksums_missing),
                "evidence": list(boot.evidence),
                "timed_out": boot.timed_out,
                "console_tail": boot.console_tail,
            },
            "timings_s": self.timings,
            "convert_mib_s": self.conversion.mib_per_s if self.conversion else None,
            "bare_convert_mib_s": (
                self.conversion.virtual_mib / self.bare_convert_s if self.conversion and self.bare_convert_s else None
            ),
        }


def source_kind(path: Path) -> Literal["disk", "ova"]:
    if path.suffix.lower() in (".ova", ".ovf"):
        return "ova"
    try:
        with open(path, "rb") as fh:
            fh.seek(257)
            if fh.read(5) == b"ustar":
                return "ova"
    except OSError as exc:
        raise BadSource(f"{path}: cannot read: {exc.strerror}") from None
    return "disk"


def precheck(path: Path) -> Literal["disk", "ova"]:
    """Bad input before anything starts: a missing file or one that is no disk nor OVA."""
    if not path.exists():
        raise BadSource(f"{path}: no such file")
    if not path.is_file():
        raise BadSource(f"{path}: not a file")
    kind = source_kind(path)
    if kind == "disk":
        image_facts(path)
    return kind


Progress = Callable[[str], None]


def validate_source(path: Path, workdir: Path, options: Options, progress: Progress = lambda _: None) -> SourceReport:
    kind = precheck(path)
    name = k8s_name(path.name.rsplit(".", 1)[0])
    report = SourceReport(path, name, kind)
    started = time.monotonic()
    report.sha256_before = sha256_file(path)
    report.timings["hash"] = time.monotonic() - started
    disk = path
    extra: list[Finding] = []
    if kind == "ova":
        if path.suffix.lower() == ".ovf":
            raise BadSource(f"{path}: a bare .ovf is not supported; give the .ova archive")
        t0 = time.monotonic()
        contents = ova_mod.open_ova(path, workdir)
        ok, text = ova_mod.print_source(path)
        report.ovf = contents.ovf
        extra = ova_mod.ova_findings(contents, ok, text)
        report.timings["ova"] = time.monotonic() - t0
        if not contents.disks:
            raise BadSource(f"{path}: the OVF names no disk")
        disk = contents.disks[0]
    image = image_facts(disk)
    report.image = image
    progress(f"{name}: inspecting")
    inspection = inspect_disk(image)
    report.inspection = inspection
    report.timings["inspect"] = inspection.seconds
    report.findings = sort_findings(findings_for(inspection, options.bus, options.target) + extra)
    guest = inspection.guest
    if blocked_by_inspection(report.findings) or guest is None:
        _finish(report, None, path)
        return report
    # --- convert --------------------------------------------------------------------
    out_dir = options.fix_dir or workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.qcow2"
    progress(f"{name}: converting")
    if options.measure_bare:
        report.bare_convert_s = bare_convert_seconds(disk, image.format, "qcow2", workdir)
    report.conversion = qemu_img_convert(disk, image.format, output, "qcow2", image.virtual_size)
    report.timings["convert"] = report.conversion.seconds
    if report.bare_convert_s is not None:
        report.timings["bare_convert"] = report.bare_convert_s
    report.output = output if options.fix_dir else None
    codes = {f.code for f in report.findings if f.fixable and f.severity == "critical"}
    if options.fix_dir and codes:
        progress(f"{name}: fixing ({options.fix_method})")
        try:
            if options.fix_method == "v2v":
                v2v_dir = workdir / "v2v"
                v2v_dir.mkdir()
                converted, report.v2v_s = virt_v2v_local(path, kind, v2v_dir, name)
                shutil.move(str(converted), output)
                report.timings["virt_v2v"] = report.v2v_s
                report.fix = apply_fixes(output, "qcow2", guest, codes, options.bus, workdir, initramfs=False)
                report.fix = FixReport(
                    report.fix.applied + ("virt-v2v: virtio drivers installed",),
                    report.fix.resolved | {c for c in codes if c.startswith("initramfs-missing-")},
                    report.fix.seconds + report.v2v_s,
                )
            else:
                report.fix = apply_fixes(output, "qcow2", guest, codes, options.bus, workdir)
            report.timings["fix"] = report.fix.seconds
        except (FixError, ConversionError, RuntimeError) as exc:
            report.fix_error = str(exc)
    # --- kubevirt manifests ---------------------------------------------------------
    if options.target == "kubevirt":
        schemas = load_schemas(kubevirt=options.kubevirt_release)
        mac = next((n.mac for n in report.ovf.nics if n.mac), None) if report.ovf and options.keep_mac else None
        shape = VmShape(
            name=name,
            cpus=report.ovf.cpus if report.ovf else 1,
            memory_mib=report.ovf.memory_mib if report.ovf else options.memory_mib,
            firmware=guest.firmware,
            disk_bytes=image.virtual_size,
            bus=options.bus,
            mac=mac,
        )
        target_dir = options.fix_dir or options.manifest_dir or workdir
        target_dir.mkdir(parents=True, exist_ok=True)
        report.manifest = write_manifests(build_manifests(shape, schemas), target_dir / f"{name}.kubevirt.yaml")
    # --- boot proof -----------------------------------------------------------------
    progress(f"{name}: booting")
    overlay = workdir / f"{name}.probe.qcow2"
    t0 = time.monotonic()
    probe = prepare_overlay(
        output, "qcow2", overlay, guest.init_system, guest.root_device, [p for p, _ in guest.checksums]
    )
    report.timings["probe_setup"] = time.monotonic() - t0
    report.boot = boot_and_follow(
        overlay,
        "qcow2",
        workdir,
        name=f"vp-v2v-{workdir.name}-{name}"[:60],
        bus=options.bus,
        expected=dict(guest.checksums),
        probe_installed=probe,
        timeout_s=options.boot_timeout_s,
        memory_mib=options.memory_mib,
    )
    report.timings["boot"] = report.boot.seconds
    overlay.unlink(missing_ok=True)
    if not options.fix_dir:
        output.unlink(missing_ok=True)
    _finish(report, report.boot, path)
    return report


def _finish(report: SourceReport, boot: BootProof | None, path: Path) -> None:
    report.sha256_after = sha256_file(path)
    resolved = report.fix.resolved if report.fix else frozenset()
    decision = decide(report.findings, boot, resolved, report.sha256_before == report.sha256_after)
    if report.fix_error:
        decision = Decision(
            decision.verdict, (f"fix failed: {report.fix_error}", *decision.reasons), decision.unsupported
        )
    report.decision = decision
