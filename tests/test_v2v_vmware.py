"""VMware metadata concerns from a .vmx (alone or beside its disks) and from an OVF, each with a
stable code and a severity, and any critical one blocking. Windows verdicts on plain facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtproof.cli import main
from virtproof.premigrate.findings import Finding
from virtproof.premigrate.fixtures.ova import MAC, OVF_TEMPLATE
from virtproof.premigrate.ova import ovf_meta, parse_ovf
from virtproof.premigrate.verdict import BOOT_NOT_PROVEN, decide_windows
from virtproof.premigrate.vmware import concerns, parse_vmx, vmx_meta
from virtproof.premigrate.windows import StaticIp, WindowsFacts, windows_findings

RISKY_VMX = """.encoding = "UTF-8"
displayName = "Web Server 01 (prod)"
guestOS = "windows2019srv-64"
numvcpus = "4"
memSize = "8192"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
vtpm.present = "TRUE"
vcpu.hotadd = "TRUE"
mem.hotadd = "TRUE"
ctkEnabled = "TRUE"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01-000002.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "data.vmdk"
scsi0:1.mode = "independent-persistent"
scsi1.present = "TRUE"
scsi1.sharedBus = "physical"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "quorum.vmdk"
scsi1:1.present = "TRUE"
scsi1:1.deviceType = "rawDisk"
scsi1:1.fileName = "/vmfs/devices/disks/naa.600508b1001c"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "tools.iso"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.address = "00:50:56:8A:3C:09"
ethernet0.networkName = "Prod"
ethernet1.present = "TRUE"
ethernet1.virtualDev = "vlance"
pciPassthru0.present = "TRUE"
pciPassthru0.deviceName = "NVIDIA T4"
usb_xhci.present = "TRUE"
usb:0.present = "TRUE"
usb:0.deviceType = "hid"
serial0.present = "TRUE"
serial0.fileType = "device"
serial0.fileName = "/dev/ttyS0"
"""


def _codes(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity == severity}


def test_vmx_concerns_have_codes_and_severities() -> None:
    meta = vmx_meta(parse_vmx(RISKY_VMX), "web01.vmx", {"snapshot.numsnapshots": "2"})
    assert (meta.cpus, meta.memory_mib, meta.firmware, meta.secure_boot, meta.vtpm) == (4, 8192, "efi", True, True)
    assert [d.file for d in meta.disks] == ["web01-000002.vmdk", "data.vmdk", "quorum.vmdk",
                                            "/vmfs/devices/disks/naa.600508b1001c"]  # fmt: skip
    assert [n.model for n in meta.nics] == ["vmxnet3", "vlance"] and meta.nics[0].mac == "00:50:56:8a:3c:09"
    findings = concerns(meta, "web-server-01-prod")
    assert _codes(findings, "critical") == {
        "vmware-snapshots",
        "vmware-snapshot-delta-disk",
        "vmware-independent-disk",
        "vmware-shared-disk",
        "vmware-rdm",
        "vmware-passthrough",
    }
    assert {"vmware-vtpm", "vmware-hotplug", "vmware-name", "vmware-nic-model"} <= _codes(findings, "warning")
    assert {"vmware-cbt", "vmware-secure-boot", "vmware-hardware"} <= _codes(findings, "info")
    passthrough = [f.message for f in findings if f.code == "vmware-passthrough"]
    assert any("NVIDIA T4" in m for m in passthrough) and any("ttyS0" in m for m in passthrough)
    assert any("USB" in m for m in passthrough)
    name = next(f for f in findings if f.code == "vmware-name")
    assert "web-server-01-prod" in name.message


def test_plain_vmx_has_no_critical_concern() -> None:
    text = 'displayName = "db01"\nguestOS = "debian12-64"\nnumvcpus = "2"\nmemSize = "4096"\n'
    text += 'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "db01.vmdk"\nethernet0.present = "TRUE"\n'
    text += 'ethernet0.virtualDev = "vmxnet3"\n'
    findings = concerns(vmx_meta(parse_vmx(text), "db01.vmx"), "db01")
    assert _codes(findings, "critical") == set() and "vmware-cbt-off" in _codes(findings)
    too_many = text + "".join(f'scsi1:{i}.present = "TRUE"\nscsi1:{i}.fileName = "d{i}.vmdk"\n' for i in range(16))
    assert "vmware-too-many-disks" in _codes(concerns(vmx_meta(parse_vmx(too_many), "x.vmx"), "x"), "critical")
    odd = text.replace("debian12-64", "darwin21-64")
    assert "vmware-guest-os" in _codes(concerns(vmx_meta(parse_vmx(odd), "x.vmx"), "x"), "critical")


def test_ovf_config_keys_become_concerns() -> None:
    ovf = OVF_TEMPLATE.format(disk="d.vmdk", disk_size=1, capacity_mib=1, name="App_Server", mac=MAC)
    ovf = ovf.replace(
        '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>',
        '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>'
        '<vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" vmw:value="true"/>'
        '<vmw:Config ovf:required="false" vmw:key="cpuHotAddEnabled" vmw:value="true"/>'
        '<Item><rasd:ElementName>vTPM</rasd:ElementName><rasd:InstanceID>9</rasd:InstanceID>'
        "<rasd:ResourceSubType>vmware.vtpm</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType></Item>",
    ).replace(
        "<rasd:ResourceType>17</rasd:ResourceType>",
        '<rasd:ResourceType>17</rasd:ResourceType><vmw:Config ovf:required="false" vmw:key="backing.diskMode" '
        'vmw:value="independent_persistent"/>',
    )
    info = parse_ovf(ovf)
    meta = ovf_meta(info)
    assert meta.firmware == "efi" and meta.secure_boot and meta.vtpm and meta.cpu_hotplug
    assert meta.disks[0].mode == "independent-persistent"
    findings = concerns(meta, "app-server")
    assert "vmware-independent-disk" in _codes(findings, "critical")
    assert {"vmware-vtpm", "vmware-hotplug", "vmware-name"} <= _codes(findings, "warning")


def test_a_vmx_alone_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vmx = tmp_path / "web01.vmx"
    vmx.write_text(RISKY_VMX)
    (tmp_path / "web01.vmsd").write_text('snapshot.numSnapshots = "2"\n')
    code = main(["premigrate", str(vmx), "--json", "--results", str(tmp_path / "r")])
    report = json.loads(capsys.readouterr().out)["sources"][0]
    assert code == 1 and report["verdict"] == "blocked" and report["kind"] == "vmx"
    assert any(r.startswith("vmware-rdm:") for r in report["reasons"])
    assert report["vmware"]["snapshots"] == 2 and report["vmware"]["secure_boot"] is True
    codes = {f["code"]: f["severity"] for f in report["findings"]}
    assert codes["vmware-snapshots"] == "critical" and codes["vmware-disk-not-given"] == "info"
    assert (Path(report["source"]).parent / "web01.vmx").exists()


def test_bad_vmx_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vmx = tmp_path / "x.vmx"
    vmx.write_text('numvcpus = "lots"\n')
    assert main(["premigrate", str(vmx), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "numvcpus 'lots' is not a number" in err and len(err.splitlines()) == 1


def _windows(**changes: object) -> WindowsFacts:
    base: dict[str, object] = dict(
        product="Windows Server 2019 Standard",
        version="10.0",
        build="17763",
        edition="ServerStandard",
        services={"viostor": 0, "vioscsi": 0, "netkvm": 3},
        driver_files=frozenset({"viostor.sys", "netkvm.sys"}),
        static_ips=(),
        pending_reboot=(),
        device_install_blocked=(),
        antivirus=(),
    )
    base.update(changes)
    return WindowsFacts(**base)  # type: ignore[arg-type]


def test_windows_driver_verdicts() -> None:
    ready = decide_windows(windows_findings(_windows(), "virtio", "uefi"))
    assert ready.verdict == "ready" and ready.reasons[-1] == BOOT_NOT_PROVEN
    bare = decide_windows(windows_findings(_windows(services={"pvscsi": 0, "vmxnet3ndis6": 3}), "virtio", "bios"))
    assert bare.verdict == "needs-fixes"
    assert bare.reasons[0] == "install virtio-win storage and network drivers before moving"
    assert bare.reasons[-1] == BOOT_NOT_PROVEN
    no_net = decide_windows(windows_findings(_windows(services={"viostor": 0}), "virtio", "bios"))
    assert no_net.reasons[0] == "install virtio-win network drivers before moving"
    scsi = windows_findings(_windows(services={"viostor": 0, "netkvm": 3}), "scsi", "bios")
    assert "windows-driver-missing-vioscsi" in _codes(scsi, "critical")
    disabled = windows_findings(_windows(services={"viostor": 4, "netkvm": 3}), "virtio", "bios")
    assert "windows-driver-missing-viostor" in _codes(disabled, "critical")
    risky = windows_findings(
        _windows(
            static_ips=(StaticIp("Ethernet0", "10.0.0.5", "255.255.255.0", "10.0.0.1", "10.0.0.2"),),
            pending_reboot=("Windows Update",),
            device_install_blocked=("DenyUnspecified",),
            antivirus=("Symantec Endpoint Protection",),
        ),
        "virtio",
        "bios",
    )
    assert {"windows-pending-reboot", "windows-gpo-device-install"} <= _codes(risky, "critical")
    assert {"windows-static-ip", "windows-antivirus"} <= _codes(risky, "warning")
    assert decide_windows(risky).verdict == "needs-fixes"
    blocked = decide_windows([*windows_findings(_windows(), "virtio", "bios"), Finding("vmware-rdm", "critical", "x")])
    assert blocked.verdict == "blocked" and blocked.reasons[-1] == BOOT_NOT_PROVEN
