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
from virtproof.premigrate import cancel, vmware
from virtproof.premigrate import ova as ova_mod
from virtproof.premigrate.bootproof import BootProof, boot_and_follow, prepare_overlay
from virtproof.premigrate.checks import DiskBus, Target, findings_for, secure_boot_findings
from virtproof.premigrate.convert import (
    Conversion,
    ConversionError,
    bare_convert_seconds,
    qemu_img_convert,
    virt_v2v_local,
)
from virtproof.premigrate.findings import Finding, sort_findings
from virtproof.premigrate.fix import FixError, FixReport, apply_fixes, prepare_for_virt_v2v
from virtproof.premigrate.imagefile import BadSource, ImageFacts, image_facts, sha256_file
from virtproof.premigrate.inspect import Inspection, inspect_disk
from virtproof.premigrate.manifests import VmShape, build_manifests, k8s_name, virtual_machine, write_manifests
from virtproof.premigrate.verdict import Decision, blocked_by_inspection, decide, decide_windows
from virtproof.scenarios.kubevirt import KUBEVIRT_VERSION

FixMethod = Literal["native", "v2v"]


def _stage(progress: Callable[[str], None], message: str) -> None:
    cancel.check()
    progress(message)


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
    evidence_dir: Path | None = None  # where the last screen of each boot proof is kept (PNG)


@dataclass
class SourceReport:
    source: Path
    name: str
    kind: Literal["disk", "ova", "vmx"]
    sha256_before: str = ""
    sha256_after: str = ""
    image: ImageFacts | None = None
    ovf: ova_mod.OvfInfo | None = None
    meta: vmware.VmMeta | None = None  # the VMware configuration (OVF or VMX)
    conversion_error: str | None = None
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
                "efi_loaders": list(guest.efi_loaders),
                "esp_grub_configs": list(guest.esp_grub_configs),
                "mounts": [{"mountpoint": m.mountpoint, "device": m.device, "fstype": m.fstype} for m in guest.mounts],
                "secure_boot_ready": guest.secure_boot_ready,
                "serial_console": guest.serial_console,
                "windows": None if guest.windows is None else _windows_dict(guest),
            },
            "vmware": None if self.meta is None else _meta_dict(self.meta),
            "conversion_error": self.conversion_error,
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
                "stages": list(boot.stages),
                "stopped": boot.stopped,
                "screen_png": boot.screen_png,
                "screen_text": boot.screen_text,
                "devices": boot.devices,
                "qemu_argv": list(boot.qemu_argv),
            },
            "timings_s": self.timings,
            "convert_mib_s": self.conversion.mib_per_s if self.conversion else None,
            "bare_convert_mib_s": (
                self.conversion.virtual_mib / self.bare_convert_s if self.conversion and self.bare_convert_s else None
            ),
        }


def _windows_dict(guest: Any) -> dict[str, Any]:
    win = guest.windows
    return {
        "product": win.product,
        "version": win.version,
        "build": win.build,
        "edition": win.edition,
        "services": win.services,
        "driver_files": sorted(win.driver_files),
        "static_ips": [vars(ip) for ip in win.static_ips],
        "pending_reboot": list(win.pending_reboot),
        "device_install_blocked": list(win.device_install_blocked),
        "antivirus": list(win.antivirus),
    }


def _meta_dict(meta: vmware.VmMeta) -> dict[str, Any]:
    out = {k: v for k, v in vars(meta).items() if k not in ("disks", "nics")}
    out["disks"] = [vars(d) for d in meta.disks]
    out["nics"] = [vars(n) for n in meta.nics]
    return out


def source_kind(path: Path) -> Literal["disk", "ova", "vmx"]:
    if path.suffix.lower() == ".vmx":
        return "vmx"
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


def precheck(path: Path) -> Literal["disk", "ova", "vmx"]:
    """Bad input before anything starts: a missing file or one that is no disk, OVA nor VMX."""
    if not path.exists():
        raise BadSource(f"{path}: no such file")
    if not path.is_file():
        raise BadSource(f"{path}: not a file")
    kind = source_kind(path)
    if kind == "disk":
        image_facts(path)
    elif kind == "vmx":
        vmware.open_vmx(path)
    elif path.suffix.lower() == ".ovf":
        raise BadSource(f"{path}: a bare .ovf is not supported; give the .ova archive")
    else:
        ova_mod.check_ova(path)
    return kind


Progress = Callable[[str], None]


def _source_hash(path: Path, extents: tuple[Path, ...] = ()) -> str:
    return ",".join(sha256_file(p) for p in (path, *extents))


def _shape(name: str, guest: Any, image: ImageFacts, options: Options, meta: vmware.VmMeta | None) -> VmShape:
    mac = next((n.mac for n in meta.nics if n.mac), None) if meta and options.keep_mac else None
    firmware: Literal["bios", "uefi"] = (
        guest.firmware if guest is not None else ("uefi" if meta and meta.firmware == "efi" else "bios")
    )
    return VmShape(
        name=name,
        cpus=meta.cpus if meta else 1,
        memory_mib=meta.memory_mib if meta else options.memory_mib,
        firmware=firmware,
        disk_bytes=image.virtual_size,
        bus=options.bus,
        mac=mac,
        secure_boot=bool(meta and meta.secure_boot and firmware == "uefi"),
    )


def validate_source(path: Path, workdir: Path, options: Options, progress: Progress = lambda _: None) -> SourceReport:
    kind = precheck(path)
    name = k8s_name(path.name.rsplit(".", 1)[0])
    report = SourceReport(path, name, kind)
    started = time.monotonic()
    disk = path
    extra: list[Finding] = []
    extents: tuple[Path, ...] = ()
    if kind == "ova":
        report.sha256_before = _source_hash(path)
        t0 = time.monotonic()
        contents = ova_mod.open_ova(path, workdir)
        ok, text = ova_mod.print_source(path)
        report.ovf = contents.ovf
        report.meta = ova_mod.ovf_meta(contents.ovf)
        extra = ova_mod.ova_findings(contents, ok, text) + vmware.concerns(report.meta, name)
        report.timings["ova"] = time.monotonic() - t0
        if not contents.disks:
            raise BadSource(f"{path}: the OVF names no disk")
        disk = contents.disks[0]
    elif kind == "vmx":
        vmx = vmware.open_vmx(path)
        report.meta = vmx.meta
        extra = vmware.concerns(vmx.meta, name)
        for missing in vmx.missing:
            extra.append(Finding("vmware-disk-not-given", "info", f"disk {missing} is not beside the .vmx"))
        report.sha256_before = _source_hash(path, vmx.disks)
        if not vmx.disks:
            report.findings = sort_findings(extra)
            report.timings["hash"] = time.monotonic() - started
            _finish_metadata_only(report, path, vmx.disks)
            return report
        disk = vmx.disks[0]
        extents = vmx.disks
    image = image_facts(disk)
    report.image = image
    if kind == "disk":
        extents = image.extents
        report.sha256_before = _source_hash(path, extents)
    report.timings["hash"] = time.monotonic() - started - report.timings.get("ova", 0.0)
    _stage(progress, f"{name}: inspecting")
    inspection = inspect_disk(image)
    report.inspection = inspection
    report.timings["inspect"] = inspection.seconds
    guest = inspection.guest
    if report.meta is not None:
        extra += secure_boot_findings(report.meta.secure_boot, guest)
    report.findings = sort_findings(findings_for(inspection, options.bus, options.target) + extra)
    if guest is not None and guest.os_type == "windows":
        _finish(report, None, path, extents, windows=True)
        return report
    if blocked_by_inspection(report.findings) or guest is None:
        _finish(report, None, path, extents)
        return report
    # --- convert --------------------------------------------------------------------
    out_dir = options.fix_dir or workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.qcow2"
    _stage(progress, f"{name}: converting")
    try:
        if options.measure_bare:
            report.bare_convert_s = bare_convert_seconds(disk, image.format, "qcow2", workdir)
        report.conversion = qemu_img_convert(disk, image.format, output, "qcow2", image.virtual_size)
    except ConversionError as exc:
        report.conversion_error = str(exc)
        report.findings.append(Finding("conversion-failed", "critical", f"{exc} (a truncated or corrupt image?)"))
        output.unlink(missing_ok=True)
        _finish(report, None, path, extents)
        return report
    report.timings["convert"] = report.conversion.seconds
    if report.bare_convert_s is not None:
        report.timings["bare_convert"] = report.bare_convert_s
    report.output = output if options.fix_dir else None
    codes = {f.code for f in report.findings if f.fixable and f.severity == "critical"}
    if options.fix_dir and codes:
        _stage(progress, f"{name}: fixing ({options.fix_method})")
        try:
            if options.fix_method == "v2v":
                # virt-v2v converts our qcow2 copy (the source's bytes, already read by qemu-img
                # with its format given), so what it needs first can be done on that copy.
                t0 = time.monotonic()
                before = prepare_for_virt_v2v(output, "qcow2", guest)
                prepared_s = time.monotonic() - t0
                v2v_dir = workdir / "v2v"
                v2v_dir.mkdir()
                converted, report.v2v_s = virt_v2v_local(output, "disk", v2v_dir, name, input_format="qcow2")
                shutil.move(str(converted), output)
                report.timings["virt_v2v"] = report.v2v_s
                report.fix = apply_fixes(output, "qcow2", guest, codes, options.bus, workdir, initramfs=False)
                report.fix = FixReport(
                    before + report.fix.applied + ("virt-v2v: virtio drivers installed",),
                    report.fix.resolved | {c for c in codes if c.startswith("initramfs-missing-")},
                    report.fix.seconds + report.v2v_s + prepared_s,
                )
            else:
                report.fix = apply_fixes(output, "qcow2", guest, codes, options.bus, workdir)
            report.timings["fix"] = report.fix.seconds
        except (FixError, ConversionError, RuntimeError) as exc:
            report.fix_error = str(exc)
    # --- the VirtualMachine: written for kubevirt, and the boot proof's device model -------
    shape = _shape(name, guest, image, options, report.meta)
    vm = virtual_machine(shape)
    if options.target == "kubevirt":
        schemas = load_schemas(kubevirt=options.kubevirt_release)
        target_dir = options.fix_dir or options.manifest_dir or workdir
        target_dir.mkdir(parents=True, exist_ok=True)
        report.manifest = write_manifests(build_manifests(shape, schemas), target_dir / f"{name}.kubevirt.yaml")
    # --- boot proof -----------------------------------------------------------------
    _stage(progress, f"{name}: booting")
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
        vm=vm,
        # Not "vp-...": `virtproof lab clean` SIGKILLs every qemu named guest=vp-* that is not in a
        # live lab. A boot proof dies with its parent thread (pdeathsig), so it leaves none behind.
        name=f"vpboot-{workdir.name}-{name}"[:60],
        expected=dict(guest.checksums),
        probe_installed=probe,
        timeout_s=options.boot_timeout_s,
        memory_mib=options.memory_mib,
        evidence_dir=options.evidence_dir,
    )
    report.timings["boot"] = report.boot.seconds
    overlay.unlink(missing_ok=True)
    if not options.fix_dir:
        output.unlink(missing_ok=True)
    _finish(report, report.boot, path, extents)
    return report


def _finish_metadata_only(report: SourceReport, path: Path, extents: tuple[Path, ...]) -> None:
    report.sha256_after = _source_hash(path, extents)
    blocking = blocked_by_inspection(report.findings)
    if blocking:
        report.decision = Decision("blocked", tuple(f"{f.code}: {f.message}" for f in blocking))
    else:
        report.decision = Decision(
            "needs-fixes", ("metadata only: no disk was given beside the .vmx, so nothing was inspected or booted",)
        )


def _finish(
    report: SourceReport, boot: BootProof | None, path: Path, extents: tuple[Path, ...] = (), windows: bool = False
) -> None:
    report.sha256_after = _source_hash(path, extents)
    if report.sha256_after != report.sha256_before:
        report.decision = Decision("blocked", ("the source changed while it was being validated",))
        return
    if windows:
        report.decision = decide_windows(report.findings)
        return
    resolved = report.fix.resolved if report.fix else frozenset()
    decision = decide(report.findings, boot, resolved, True)
    if report.fix_error:
        decision = Decision(
            decision.verdict, (f"fix failed: {report.fix_error}", *decision.reasons), decision.unsupported
        )
    report.decision = decision
