"""End to end: ``virtproof premigrate`` on built fixtures, with real libguestfs, qemu-img,
qemu (TCG, SeaBIOS and OVMF) and, once, virt-v2v. Each test checks verdicts, evidence, samples, that the source
is unchanged, and that nothing is left running or on disk."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtproof.cli import main
from virtproof.premigrate.fixtures.catalog import fixture_path
from virtproof.reports.results import read_manifest, read_samples

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _premigrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, boot_timeout: float = 900
) -> tuple[int, dict[str, Any]]:
    # A generous boot timeout: an upper bound on a loaded 2-core machine, never a gate.
    results = str(tmp_path / "results")
    code = main(["premigrate", *args, "--json", "--boot-timeout", str(boot_timeout), "--results", results])
    out = json.loads(capsys.readouterr().out)
    run = Path(out["run"])
    by_name = {Path(s["source"]).name: s for s in out["sources"]}
    for report in by_name.values():  # `virtproof lab clean` kills guest=vp-* qemus of no live lab
        assert not report["boot"] or "guest=vp-" not in " ".join(report["boot"]["qemu_argv"])
    _assert_clean(run)
    return code, {"run": run, **by_name}


def _assert_clean(run: Path) -> None:
    procs = subprocess.run(["pgrep", "-af", f"vp-v2v-{run.name}"], capture_output=True, text=True).stdout
    assert "qemu-system" not in procs, procs
    assert not list(Path(tempfile.gettempdir()).glob(f"vp-v2v-{run.name}-*"))


def _metrics(run: Path, source: str) -> set[str]:
    return {s.metric for s in read_samples(run).samples if source.startswith(s.labels.get("source", "?"))}


def test_micro_disks_in_parallel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = fixture_path("micro-virtio", "vmdk"), fixture_path("micro-novirtio", "vhdx")
    code, out = _premigrate(tmp_path, capsys, str(good), str(bad), "--jobs", "2")
    assert code == 1  # one source is not ready
    ready, blocked = out[good.name], out[bad.name]
    assert ready["verdict"] == "ready", ready["reasons"]
    assert ready["boot"]["network"] and ready["boot"]["ssh_banner"].startswith("SSH-")
    assert ready["boot"]["checksums_ok"] and not ready["boot"]["checksums_bad"]
    assert ready["image"]["format"] == "vmdk" and ready["source_unchanged"]
    assert blocked["verdict"] == "blocked" and "does not boot on virtio" in blocked["reasons"][0]
    assert {"initramfs-missing-virtio_blk", "initramfs-missing-virtio_pci"} <= {
        f["code"] for f in blocked["findings"] if f["severity"] == "critical"
    }
    assert blocked["image"]["format"] == "vhdx" and blocked["source_unchanged"]
    run = out["run"]
    assert read_manifest(run)["status"] == "failed"
    assert {
        "v2v.inspect_s",
        "v2v.convert_s",
        "v2v.convert_mib_s",
        "v2v.bare_convert_mib_s",
        "v2v.boot_s",
        "v2v.verdict",
        "v2v.findings",
    } <= _metrics(run, good.stem)
    assert (run / "v2v" / f"{ready['name']}.verdict.json").exists()


def _codes(report: dict[str, Any], severity: str = "critical") -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] == severity}


def _manifest(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from virtproof.lab.kubevirt.schema import load_schemas

    dv, vm = yaml.safe_load_all(Path(report["manifest"]).read_text())
    schemas = load_schemas()
    assert schemas.validate("cdi:v1beta1.DataVolume", dv) == []
    assert schemas.validate("kubevirt:v1.VirtualMachine", vm) == []
    return dv, vm


def _assert_layout(report: dict[str, Any], firmware: str) -> None:
    """The fixture's traits as inspection mounted them: BIOS is LVM root + a separate ext4 /boot,
    UEFI an XFS root + the ESP (vfat) at /boot/efi."""
    mounts = {m["mountpoint"]: (m["device"], m["fstype"]) for m in report["guest"]["mounts"]}
    assert report["guest"]["firmware"] == firmware, mounts
    if firmware == "bios":
        assert mounts["/"] in (("/dev/vg0/root", "ext4"), ("/dev/mapper/vg0-root", "ext4")), mounts
        assert mounts["/boot"] == ("/dev/sda1", "ext4") and set(mounts) == {"/", "/boot"}, mounts
    else:
        assert mounts == {"/": ("/dev/sda2", "xfs"), "/boot/efi": ("/dev/sda1", "vfat")}, mounts


def test_clean_grub_bios_uefi_and_ova_are_ready_for_kubevirt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GRUB on BIOS (LVM root, separate /boot, as VMDK), GRUB on UEFI (GPT, ESP, XFS root) booted
    under OVMF, and a VMware OVA export: each ready with a boot proof on the generated VM's devices."""
    bios, uefi = fixture_path("grub-bios-clean", "vmdk"), fixture_path("grub-uefi-clean")
    ova = fixture_path("debian-ova")
    outdir = tmp_path / "out"
    code, out = _premigrate(
        tmp_path, capsys, str(bios), str(uefi), str(ova), "--target", "kubevirt", "--keep-mac", "--fix", str(outdir)
    )
    assert code == 0, {k: (v["reasons"], v["boot"] and v["boot"]["stopped"]) for k, v in out.items() if k != "run"}
    for name in (bios.name, uefi.name, ova.name):
        report = out[name]
        assert report["verdict"] == "ready" and report["boot"]["network"].split()[1] == "enp1s0"
        assert {"firmware", "bootloader", "kernel", "userspace", "network"} <= set(report["boot"]["stages"])
        assert report["boot"]["checksums_ok"] and not report["boot"]["checksums_bad"]
        assert report["fixes"] == [] and Path(report["output"]).exists() and report["source_unchanged"]
        assert "-device VGA" in " ".join(report["boot"]["qemu_argv"])  # KubeVirt's graphics device
    b, u = out[bios.name], out[uefi.name]
    assert b["image"]["format"] == "vmdk" and b["guest"]["firmware"] == "bios"
    assert any(line.startswith("/dev/mapper/vg0-root /") for line in b["guest"]["fstab"])
    _assert_layout(b, "bios")
    _assert_layout(u, "uefi")
    assert u["guest"]["firmware"] == "uefi" and "EFI/BOOT/BOOTX64.EFI" in u["guest"]["efi_loaders"]
    assert not u["guest"]["secure_boot_ready"] and u["boot"]["devices"].startswith("q35, UEFI (OVMF)")
    assert "OVMF_CODE_4M.fd" in " ".join(u["boot"]["qemu_argv"])
    uefi_finding = next(f for f in u["findings"] if f["code"] == "firmware-uefi")
    assert "Secure Boot must be off" in uefi_finding["message"]
    _, vm = _manifest(u)
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": False}} and domain["machine"]["type"] == "q35"
    _, vm = _manifest(b)
    assert vm["spec"]["template"]["spec"]["domain"]["firmware"]["bootloader"] == {"bios": {}}
    o = out[ova.name]
    assert o["ovf"]["nics"][0]["model"] == "vmxnet3" and o["ovf"]["disks"][0]["controller"] == "pvscsi"
    assert o["image"]["subformat"] == "streamOptimized"
    assert {"ova-manifest-ok", "vmware-nic-model", "disk-controller-changes", "vmware-cbt-off"} <= {
        f["code"] for f in o["findings"]
    }
    _, vm = _manifest(o)
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"]["cores"] == 2 and domain["devices"]["interfaces"][0]["macAddress"] == "00:50:56:8a:3c:01"


def test_vmware_twins_are_not_ready_and_say_where_the_boot_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The VMware-like GRUB disks (no virtio in the initramfs, /dev/sda1 in fstab, the NIC pinned
    to ens192 or to its VMware MAC, open-vm-tools, no serial console), a disk that boots but whose
    network is pinned, and a tampered OVA."""
    bios, uefi = fixture_path("grub-bios-vmware", "vmdk"), fixture_path("grub-uefi-vmware")
    pinned, tampered = fixture_path("debian-netpinned"), fixture_path("debian-ova-tampered")
    # The UEFI twin stops in its initramfs with no serial console: only pixels say so, and the
    # proof ends at its timeout, so that is kept short here (a good boot takes about a minute).
    code, out = _premigrate(tmp_path, capsys, str(bios), str(uefi), str(pinned), str(tampered), boot_timeout=240)
    assert code == 1
    for name, nic_code in ((bios.name, "network-name-pinned"), (uefi.name, "network-mac-bound")):
        report = out[name]
        assert report["verdict"] == "blocked", report["reasons"]
        _assert_layout(report, "bios" if name == bios.name else "uefi")
        assert {"initramfs-missing-virtio_blk", "initramfs-missing-virtio_pci", "fstab-device-name", nic_code} <= (
            _codes(report)
        )
        reasons = "\n".join(report["reasons"])
        assert reasons.startswith("does not boot on virtio: stopped in ") and "virtio_blk" in reasons, reasons
        assert nic_code in reasons and "vmware-tools-present" in _codes(report, "warning")
        assert not report["guest"]["serial_console"] and not report["boot"]["booted"]
        assert "userspace" not in report["boot"]["stages"] and "bootloader" in report["boot"]["stages"]
        assert Path(report["boot"]["screen_png"]).read_bytes().startswith(b"\x89PNG")
        assert report["boot"]["screen_png"].startswith(str(out["run"]))
    screen = out[bios.name]["boot"]
    assert screen["stopped"].startswith("stopped in kernel (never reached userspace): ALERT!"), screen["stopped"]
    assert "ALERT!" in screen["screen_text"] and "/dev/mapper/vg0-root does not exist" in screen["screen_text"]
    assert out[pinned.name]["verdict"] == "needs-fixes", out[pinned.name]["reasons"]
    assert any("no network" in r for r in out[pinned.name]["reasons"])
    assert out[pinned.name]["boot"]["booted"] and out[pinned.name]["boot"]["checksums_ok"]
    assert out[tampered.name]["verdict"] == "blocked" and out[tampered.name]["boot"] is None
    assert "manifest check failed" in out[tampered.name]["reasons"][0]
    assert all(r["source_unchanged"] for k, r in out.items() if k != "run")


@pytest.mark.parametrize("method", ["native", "v2v"])
def test_vmware_twins_are_ready_after_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str) -> None:
    """``--fix`` by native fixes and by virt-v2v, both twins each time (the two virt-v2v
    conversions, about 3 minutes each on an idle machine, most of it rebuilding the initramfs in
    the TCG appliance, run side by side: one source per core). The UEFI twin keeps its ESP and
    boots under OVMF; virt-v2v needs GRUB's configuration on the ESP, which the copy gets first."""
    sources = [fixture_path("grub-bios-vmware", "vmdk"), fixture_path("grub-uefi-vmware")]
    outdir = tmp_path / "fixed"
    code, out = _premigrate(
        tmp_path, capsys, *map(str, sources), "--fix", str(outdir), "--fix-method", method, "--no-bare"
    )
    for source in sources:
        report = out[source.name]
        assert report["verdict"] == "ready", (report["reasons"], report["fix_error"], report["boot"])
        assert report["boot"]["network"].split()[1] == "enp1s0" and report["source_unchanged"]
        fixes = "\n".join(report["fixes"])
        assert ("rebuilt natively" if method == "native" else "virt-v2v: virtio drivers installed") in fixes
        assert "/etc/fstab" in fixes and ("10-ens192.network" in fixes or "10-vmxnet3.network" in fixes), fixes
        assert (outdir / f"{report['name']}.qcow2").exists() and (outdir / f"{report['name']}.verdict.json").exists()
        if method == "v2v":
            assert report["timings_s"]["virt_v2v"] > 0
    uefi = out[sources[1].name]
    assert uefi["boot"]["devices"].startswith("q35, UEFI (OVMF)") and "firmware" in uefi["boot"]["stages"]
    assert "network-mac-bound" not in {r.split(":")[0] for r in uefi["reasons"]}
    if method == "v2v":
        assert "/boot/efi/EFI/debian/grub.cfg: GRUB stub" in uefi["fixes"][0], uefi["fixes"]
    assert code == 0


def test_windows_like_disks_get_driver_verdicts_without_a_boot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare, virtio = fixture_path("windows-vmware"), fixture_path("windows-virtio")
    code, out = _premigrate(tmp_path, capsys, str(bare), str(virtio), "--target", "kubevirt")
    assert code == 1
    b, v = out[bare.name], out[virtio.name]
    assert b["verdict"] == "needs-fixes"
    assert b["reasons"][0] == "install virtio-win storage and network drivers before moving"
    assert v["verdict"] == "ready" and v["reasons"][0] == "virtio-win storage and network drivers are installed"
    for report in (b, v):
        assert report["boot"] is None and report["conversion_error"] is None
        assert report["reasons"][-1].startswith("boot not proven") and report["guest"]["os"] == "windows"
        assert report["guest"]["windows"]["product"] == "Windows Server 2019 Standard"
        assert report["guest"]["firmware"] == "uefi" and report["source_unchanged"]
    assert {"windows-driver-missing-viostor", "windows-driver-missing-netkvm", "windows-pending-reboot",
            "windows-gpo-device-install"} <= _codes(b)  # fmt: skip
    assert {"windows-static-ip", "windows-antivirus", "windows-vmware-tools"} <= _codes(b, "warning")
    win = b["guest"]["windows"]
    assert win["static_ips"][0]["address"] == "10.20.30.41" and win["static_ips"][0]["interface"] == "Ethernet0"
    assert "Symantec Endpoint Protection" in win["antivirus"] and win["device_install_blocked"] == ["DenyUnspecified"]
    assert {"viostor", "vioscsi", "netkvm"} <= set(v["guest"]["windows"]["services"]) and not _codes(v)
