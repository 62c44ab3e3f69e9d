"""End to end: ``virtproof premigrate`` on built fixtures, with real libguestfs, qemu-img,
qemu (TCG) and, once, virt-v2v. Each test checks verdicts, evidence, samples, that the source
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
SHARED = Path(__file__).resolve().parents[2] / "shared" / "kubevirt"


def _premigrate(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["premigrate", *args, "--json", "--results", str(tmp_path / "results")])
    out = json.loads(capsys.readouterr().out)
    run = Path(out["run"])
    by_name = {Path(s["source"]).name: s for s in out["sources"]}
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


def test_debian_clean_and_ova_for_kubevirt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from virtproof.lab.kubevirt.schema import load_schemas

    clean, ova = fixture_path("debian-clean", "vmdk"), fixture_path("debian-ova")
    outdir = tmp_path / "out"
    code, out = _premigrate(
        tmp_path,
        capsys,
        str(clean),
        str(ova),
        "--target",
        "kubevirt",
        "--keep-mac",
        "--fix",
        str(outdir),
    )
    assert code == 0, {k: v["reasons"] for k, v in out.items() if k != "run"}
    schemas = load_schemas()
    for name in (clean.name, ova.name):
        report = out[name]
        assert report["verdict"] == "ready" and report["boot"]["network"].split()[1] == "enp1s0"
        assert report["fixes"] == [] and Path(report["output"]).exists()
        dv, vm = yaml.safe_load_all(Path(report["manifest"]).read_text())
        assert schemas.validate("cdi:v1beta1.DataVolume", dv) == []
        assert schemas.validate("kubevirt:v1.VirtualMachine", vm) == []
    ova_report = out[ova.name]
    assert (
        ova_report["ovf"]["nics"][0]["model"] == "vmxnet3" and ova_report["ovf"]["disks"][0]["controller"] == "pvscsi"
    )
    assert ova_report["image"]["subformat"] == "streamOptimized"
    codes = {f["code"] for f in ova_report["findings"]}
    assert {"ova-manifest-ok", "nic-model-changes", "disk-controller-changes"} <= codes
    vm = list(yaml.safe_load_all(Path(ova_report["manifest"]).read_text()))[1]
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"]["cores"] == 2 and domain["devices"]["interfaces"][0]["macAddress"] == "00:50:56:8a:3c:01"


def test_pinned_network_tampered_ova_and_vmware_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pinned, tampered = fixture_path("debian-netpinned"), fixture_path("debian-ova-tampered")
    vmware = fixture_path("debian-vmware", "vmdk")
    code, out = _premigrate(tmp_path, capsys, str(pinned), str(tampered), str(vmware))
    assert code == 1
    assert out[pinned.name]["verdict"] == "needs-fixes", out[pinned.name]["reasons"]
    assert any("no network" in r for r in out[pinned.name]["reasons"])
    assert out[pinned.name]["boot"]["booted"] and out[pinned.name]["boot"]["checksums_ok"]
    assert out[tampered.name]["verdict"] == "blocked" and out[tampered.name]["boot"] is None
    assert "manifest check failed" in out[tampered.name]["reasons"][0]
    report = out[vmware.name]
    assert report["verdict"] == "blocked", report["reasons"]
    assert report["boot"]["failure"] and not report["boot"]["booted"]
    assert {"initramfs-missing-virtio_blk", "fstab-device-name", "network-name-pinned"} <= {
        f["code"] for f in report["findings"] if f["severity"] == "critical"
    }
    assert all(r["source_unchanged"] for k, r in out.items() if k != "run")


def test_vmware_disk_native_fix_is_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vmware = fixture_path("debian-vmware", "vmdk")
    outdir = tmp_path / "fixed"
    code, out = _premigrate(tmp_path, capsys, str(vmware), "--fix", str(outdir))
    report = out[vmware.name]
    assert code == 0, report["reasons"]
    assert report["verdict"] == "ready" and report["boot"]["network"].split()[1] == "enp1s0"
    fixes = "\n".join(report["fixes"])
    assert "rebuilt natively" in fixes and "/etc/fstab" in fixes and "10-ens192.network" in fixes
    assert report["source_unchanged"] and (outdir / f"{report['name']}.qcow2").exists()
    assert (outdir / f"{report['name']}.verdict.json").exists()


def test_virt_v2v_fix_reports_what_virt_v2v_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fix-method v2v`` really runs virt-v2v. Our fixtures boot with extlinux, which
    virt-v2v 2.2 does not handle ("no bootloader detected"): premigrate must say so, keep the
    source intact and not call the unfixed disk ready. (Seconds, not the 3-minute conversion.)"""
    vmware = fixture_path("debian-vmware")
    code, out = _premigrate(
        tmp_path, capsys, str(vmware), "--fix", str(tmp_path / "v2v"), "--fix-method", "v2v", "--no-bare"
    )
    report = out[vmware.name]
    assert code == 1 and report["verdict"] == "blocked"
    assert report["fix_error"] and "virt-v2v failed" in report["fix_error"]
    assert "no bootloader detected" in report["fix_error"]
    assert report["reasons"][0].startswith("fix failed: virt-v2v failed")
    assert report["source_unchanged"]
