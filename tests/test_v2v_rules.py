"""V2V logic on plain data: initramfs listing, network config parsers, finding rules, verdicts,
OVF parsing and manifest checks, image format detection. No qemu, no libguestfs."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from virtproof.premigrate import netconfig
from virtproof.premigrate.bootproof import BootProof
from virtproof.premigrate.checks import findings_for, guest_findings, secure_boot_findings
from virtproof.premigrate.findings import Finding
from virtproof.premigrate.imagefile import BadSource, ImageFacts, image_facts
from virtproof.premigrate.initramfs import InitramfsError, list_initramfs, module_names
from virtproof.premigrate.inspect import BootEntry, FstabEntry, GuestFacts, Inspection, _parse_extlinux, _parse_grub
from virtproof.premigrate.ova import open_ova, ova_findings, parse_ovf
from virtproof.premigrate.probe import parse_probe, probe_script
from virtproof.premigrate.verdict import decide
from virtproof.premigrate.vmware import parse_vmx, vmx_meta

# --- initramfs ----------------------------------------------------------------------------


def _newc(names: list[str]) -> bytes:
    out = io.BytesIO()
    for ino, name in enumerate([*names, "TRAILER!!!"], 1):
        data = b"" if name == "TRAILER!!!" else b"x" * 5
        raw = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out.write(header.encode() + raw)
        out.write(b"\0" * ((4 - out.tell() % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - out.tell() % 4) % 4))
    return out.getvalue()


def test_initramfs_early_cpio_then_gzip_segment() -> None:
    early = _newc(["kernel/x86/microcode/AuthenticAMD.bin"])
    main = gzip.compress(
        _newc(
            [
                "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko",
                "usr/lib/modules/6.1/kernel/drivers/virtio/virtio-pci.ko.xz",
                "init",
            ]
        )
    )
    names = list_initramfs(early + b"\0" * 512 + main)
    assert "init" in names and "kernel/x86/microcode/AuthenticAMD.bin" in names
    assert module_names(names) == {"virtio_blk", "virtio_pci"}


def test_initramfs_rejects_garbage() -> None:
    with pytest.raises(InitramfsError):
        list_initramfs(b"this is not an initramfs at all")


def test_initramfs_lists_the_host_debian_initrd() -> None:
    initrds = sorted(Path("/boot").glob("initrd.img-*"))
    if not initrds:
        pytest.skip("no Debian initrd in /boot")
    modules = module_names(list_initramfs(initrds[-1].read_bytes()))
    assert "virtio_blk" in modules  # Debian's MODULES=most includes the virtio drivers


# --- network configs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text", "name", "mac", "portable"),
    [
        (
            "/etc/network/interfaces",
            "auto lo\niface lo inet loopback\nauto ens192\niface ens192 inet dhcp\n",
            "ens192",
            None,
            False,
        ),
        (
            "/etc/netplan/50-cloud.yaml",
            "network:\n  ethernets:\n    ens160:\n      dhcp4: true\n",
            "ens160",
            None,
            False,
        ),
        (
            "/etc/netplan/50-cloud.yaml",
            "network:\n  ethernets:\n    all:\n      match: {name: 'en*'}\n      dhcp4: true\n",
            "en*",
            None,
            True,
        ),
        (
            "/etc/systemd/network/10-any.network",
            "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n",
            "en* eth*",
            None,
            True,
        ),
        (
            "/etc/systemd/network/10-ens192.network",
            "[Match]\nName=ens192\n[Network]\nDHCP=yes\n",
            "ens192",
            None,
            False,
        ),
        (
            "/etc/NetworkManager/system-connections/wired.nmconnection",
            "[connection]\nid=wired\ntype=ethernet\ninterface-name=ens192\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n",
            "ens192",
            "00:50:56:aa:bb:cc",
            False,
        ),
        (
            "/etc/sysconfig/network-scripts/ifcfg-ens192",
            'DEVICE=ens192\nHWADDR="00:50:56:aa:bb:cc"\nBOOTPROTO=dhcp\n',
            "ens192",
            "00:50:56:aa:bb:cc",
            False,
        ),
    ],
)
def test_network_parsers(path: str, text: str, name: str, mac: str | None, portable: bool) -> None:
    [binding] = netconfig.parse(path, text)
    assert (binding.name, binding.mac, binding.matches_target()) == (name, mac, portable)


def test_udev_persistent_net_rule_is_mac_bound() -> None:
    text = 'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:50:56:aa:bb:cc", NAME="eth0"\n'
    [binding] = netconfig.parse("/etc/udev/rules.d/70-persistent-net.rules", text)
    assert binding.mac == "00:50:56:aa:bb:cc" and not binding.matches_target()


def test_eth0_is_portable_only_with_net_ifnames_0() -> None:
    [binding] = netconfig.parse("/etc/network/interfaces", "iface eth0 inet dhcp\n")
    assert not binding.matches_target(eth_names=False)
    assert binding.matches_target(eth_names=True)


# --- boot loader parsing -------------------------------------------------------------------


def test_boot_entries() -> None:
    ext = _parse_extlinux(
        "/boot/extlinux/extlinux.conf",
        "DEFAULT b\nLABEL a\n LINUX /a\nLABEL b\n  LINUX /boot/vmlinuz-6\n  INITRD /boot/i\n"
        "  APPEND root=/dev/sda1 ro\n",
    )
    assert (ext.kernel, ext.initrd, ext.root_spec) == ("/boot/vmlinuz-6", "/boot/i", "/dev/sda1")
    grub = _parse_grub(
        "/boot/grub/grub.cfg",
        "menuentry 'D' {\n\tlinux\t/boot/vmlinuz-6 root=UUID=abc ro quiet\n\tinitrd\t/boot/initrd.img-6\n}\n",
    )
    assert (grub.kernel, grub.initrd, grub.root_spec) == ("/boot/vmlinuz-6", "/boot/initrd.img-6", "UUID=abc")


# --- rules -----------------------------------------------------------------------------------


def _facts(**changes: object) -> GuestFacts:
    base: dict[str, object] = dict(
        os_type="linux",
        distro="debian",
        product="Debian 12",
        version="12.0",
        hostname="h",
        arch="x86_64",
        root_device="/dev/sda1",
        firmware="bios",
        partition_table="msdos",
        boot=BootEntry(
            "extlinux", "/boot/extlinux/extlinux.conf", "/boot/vmlinuz-6", "/boot/initrd.img-6", "root=UUID=abc ro"
        ),
        kernel_version="6",
        modules={m: "module" for m in ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")},
        initramfs_path="/boot/initrd.img-6",
        initramfs_modules=frozenset({"virtio_pci", "virtio_blk", "virtio_scsi"}),
        fstab=(FstabEntry("UUID=abc", "/", "ext4"),),
        nics=(netconfig.NicBinding("/etc/systemd/network/a.network", "networkd", "en*", None, True),),
        agents=frozenset({"qemu-guest-agent"}),
        init_system="systemd",
        initramfs_tool="initramfs-tools",
    )
    base.update(changes)
    return GuestFacts(**base)  # type: ignore[arg-type]


def _codes(findings: list[Finding], severity: str = "critical") -> set[str]:
    return {f.code for f in findings if f.severity == severity}


def test_clean_guest_has_no_critical_findings() -> None:
    assert _codes(guest_findings(_facts(), "virtio", "kubevirt")) == set()


def test_vmware_like_guest_findings() -> None:
    facts = _facts(
        initramfs_modules=frozenset({"vmw_pvscsi", "sd_mod"}),
        fstab=(FstabEntry("/dev/sda1", "/", "ext4"), FstabEntry("/dev/sdb1", "/data", "xfs")),
        boot=BootEntry("grub", "/boot/grub/grub.cfg", "/boot/vmlinuz-6", None, "root=/dev/sda1 ro"),
        nics=(netconfig.NicBinding("/etc/network/interfaces", "ifupdown", "ens192", None, True),),
        agents=frozenset({"vmware-tools"}),
    )
    findings = guest_findings(facts, "virtio", "kubevirt")
    assert _codes(findings) == {
        "initramfs-missing-virtio_blk",
        "initramfs-missing-virtio_pci",
        "fstab-device-name",
        "bootloader-device-name",
        "network-name-pinned",
    }
    assert {"no-qemu-guest-agent", "vmware-tools-present"} <= _codes(findings, "warning")
    assert all(f.fixable for f in findings if f.severity == "critical")


def test_builtin_driver_needs_no_initramfs_and_scsi_bus_needs_virtio_scsi() -> None:
    facts = _facts(
        modules={"virtio_pci": "builtin", "virtio_blk": "builtin", "virtio_scsi": "module", "virtio_net": "module"},
        initramfs_modules=frozenset(),
    )
    assert _codes(guest_findings(facts, "virtio", "qemu")) == set()
    assert _codes(guest_findings(facts, "scsi", "qemu")) == {"initramfs-missing-virtio_scsi"}


def test_missing_driver_and_windows_and_uefi() -> None:
    facts = _facts(
        modules={"virtio_pci": "module", "virtio_blk": "missing", "virtio_scsi": "missing", "virtio_net": "missing"}
    )
    assert {"driver-missing-virtio_blk", "driver-missing-virtio_net"} <= _codes(guest_findings(facts, "virtio", "qemu"))
    windows = guest_findings(_facts(os_type="windows", product="Windows Server 2019"), "virtio", "qemu")
    assert [f.code for f in windows] == ["unsupported-os"]
    uefi = guest_findings(_facts(firmware="uefi"), "virtio", "kubevirt")
    assert "firmware-uefi" in _codes(uefi, "warning")


def test_a_second_portable_config_makes_a_pinned_one_a_warning() -> None:
    nics = (
        netconfig.NicBinding("/etc/network/interfaces", "ifupdown", "ens192", None, True),
        netconfig.NicBinding("/etc/systemd/network/a.network", "networkd", "en*", None, True),
    )
    findings = guest_findings(_facts(nics=nics), "virtio", "qemu")
    assert "network-name-pinned" in _codes(findings, "warning") and not _codes(findings)


def test_image_findings() -> None:
    image = ImageFacts(Path("x.vmdk"), "vmdk", 2 * 1024**3, 10 * 1024**2, ("base.vmdk",), False, "streamOptimized")
    findings = findings_for(Inspection(image, _facts(), None, 1.0), "virtio", "qemu")
    assert {"backing-chain"} <= _codes(findings, "warning")
    assert {"stream-optimized", "image-format"} <= _codes(findings, "info")
    encrypted = ImageFacts(Path("x.qcow2"), "qcow2", 1, 1, (), True, None)
    assert "encrypted" in _codes(findings_for(Inspection(encrypted, None, "encrypted", 0), "virtio", "qemu"))


# --- verdicts -------------------------------------------------------------------------------


def _boot(**changes: object) -> BootProof:
    base: dict[str, object] = dict(
        milestones={"kernel": 1.0, "root_mounted": 4.0, "login_prompt": 20.0},
        failure=None,
        ssh_banner="SSH-2.0-OpenSSH_9.2p1",
        probe_installed=True,
        network="10.0.2.15/24 enp1s0 lo",
        network_down=None,
        checksums_ok=("/etc/passwd",),
        checksums_bad=(),
        checksums_missing=(),
        evidence=(),
        seconds=21.0,
        timed_out=False,
    )
    base.update(changes)
    return BootProof(**base)  # type: ignore[arg-type]


def test_verdicts() -> None:
    critical = Finding("network-name-pinned", "critical", "pinned", "fix it", True)
    assert decide([], _boot()).verdict == "ready"
    assert decide([], _boot(milestones={"kernel": 1.0}, failure="Gave up waiting for root")).verdict == "blocked"
    no_net = decide([critical], _boot(network=None, ssh_banner=None, network_down="lo enp1s0"))
    assert no_net.verdict == "needs-fixes" and any("no network" in r for r in no_net.reasons)
    assert decide([critical], _boot(), resolved=frozenset({"network-name-pinned"})).verdict == "ready"
    assert decide([critical], _boot()).verdict == "needs-fixes"
    assert decide([], _boot(checksums_bad=("/etc/passwd",))).verdict == "blocked"
    assert decide([], _boot(), source_unchanged=False).verdict == "blocked"
    unsupported = decide([Finding("unsupported-os", "critical", "Windows")], None)
    assert unsupported.verdict == "blocked" and unsupported.unsupported


def test_secure_boot_on_with_an_unsigned_boot_loader_is_never_ready() -> None:
    """A .vmx with Secure Boot on, a disk whose ESP has GRUB but no signed shim: the VM generated
    with efi.secureBoot: true cannot boot; flagged whatever the boot proof shows."""
    meta = vmx_meta(parse_vmx('firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\n'), "web01.vmx")
    grub = ("EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi")
    [finding] = secure_boot_findings(meta.secure_boot, _facts(firmware="uefi", efi_loaders=grub))
    assert (finding.code, finding.severity, finding.fixable) == ("secure-boot-unsigned-loader", "critical", False)
    assert "EFI/BOOT/BOOTX64.EFI" in finding.message and "Secure Boot off" in finding.fix
    assert secure_boot_findings(False, _facts(firmware="uefi", efi_loaders=grub)) == []
    signed = _facts(firmware="uefi", efi_loaders=(*grub, "EFI/debian/shimx64.efi"))
    assert secure_boot_findings(True, signed) == []
    windows = _facts(firmware="uefi", efi_loaders=("EFI/Microsoft/Boot/bootmgfw.efi",))
    assert secure_boot_findings(True, windows) == []
    assert secure_boot_findings(True, _facts(firmware="bios")) == secure_boot_findings(True, None) == []
    # The firmware refuses the loader: blocked, the finding named as the cause.
    refused = decide([finding], _boot(milestones={}, ssh_banner=None, network=None, checksums_ok=()))
    assert refused.verdict == "blocked" and any(r.startswith("secure-boot-unsigned-loader:") for r in refused.reasons)
    # A firmware that does not enforce Secure Boot booted it: still not ready.
    booted = decide([finding], _boot())
    assert booted.verdict == "needs-fixes" and booted.reasons[0].startswith("secure-boot-unsigned-loader:")


# --- probe ------------------------------------------------------------------------------------


def test_probe_output_is_parsed_from_a_noisy_console() -> None:
    console = (
        "[  OK  ] Started x\r\nVIRTPROOF-PROBE begin\r\nVIRTPROOF-PROBE sha256 abc /etc/passwd\n"
        "\x1b[0;32m noise\nVIRTPROOF-PROBE missing /srv/x\nVIRTPROOF-PROBE net-up 10.0.2.15/24 enp1s0 lo\n"
        "VIRTPROOF-PROBE end\n"
    )
    report = parse_probe(console)
    assert report.begun and report.ended and report.checksums == {"/etc/passwd": "abc"}
    assert report.missing == ("/srv/x",) and report.net_up == "10.0.2.15/24 enp1s0 lo"
    assert "'/srv/a b'" in probe_script(["/srv/a b"])


# --- OVF / OVA ----------------------------------------------------------------------------------


def test_parse_the_fixture_ovf() -> None:
    from virtproof.premigrate.fixtures.ova import MAC, OVF_TEMPLATE

    info = parse_ovf(OVF_TEMPLATE.format(disk="d.vmdk", disk_size=10, capacity_mib=2048, name="web01", mac=MAC))
    assert (info.name, info.cpus, info.memory_mib, info.firmware) == ("web01", 2, 1024, "bios")
    assert [(d.file, d.capacity_bytes, d.controller) for d in info.disks] == [("d.vmdk", 2 * 1024**3, "pvscsi")]
    assert [(n.model, n.mac) for n in info.nics] == [("vmxnet3", MAC)]


def test_bad_ovf_is_bad_input() -> None:
    with pytest.raises(BadSource, match="not valid OVF XML"):
        parse_ovf("<Envelope")


def _tiny_ova(path: Path, tamper: bool) -> None:
    from virtproof.premigrate.fixtures.ova import MAC, OVF_TEMPLATE

    disk = b"\0" * 4096
    ovf = OVF_TEMPLATE.format(disk="d.vmdk", disk_size=len(disk), capacity_mib=1, name="t", mac=MAC).encode()
    disk_sum = hashlib.sha256(disk if not tamper else b"other").hexdigest()
    mf = f"SHA256(t.ovf)= {hashlib.sha256(ovf).hexdigest()}\nSHA256(d.vmdk)= {disk_sum}\n".encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("t.ovf", ovf), ("t.mf", mf), ("d.vmdk", disk)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("tamper", [False, True])
def test_ova_manifest_check(tmp_path: Path, tamper: bool) -> None:
    _tiny_ova(tmp_path / "t.ova", tamper)
    work = tmp_path / "work"
    work.mkdir()
    contents = open_ova(tmp_path / "t.ova", work)
    assert contents.disks == (work / "disk0-d.vmdk",) and (work / "disk0-d.vmdk").stat().st_size == 4096
    codes = {f.code for f in ova_findings(contents, True, "")}
    if tamper:
        assert contents.manifest.mismatched == ("d.vmdk",)
        assert "ova-manifest-mismatch" in codes
    else:
        assert set(contents.manifest.verified) == {"t.ovf", "d.vmdk"} and "ova-manifest-ok" in codes


# --- image files ----------------------------------------------------------------------------------


def test_image_facts_rejects_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(BadSource, match="no such file"):
        image_facts(tmp_path / "absent.vmdk")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a disk\n" * 100)
    with pytest.raises(BadSource, match="unknown format"):
        image_facts(text)


def test_image_facts_reads_formats(tmp_path: Path) -> None:
    import subprocess

    raw = tmp_path / "d.raw"
    with open(raw, "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
        fh.seek(510)
        fh.write(b"\x55\xaa")
    for fmt, opts in (("vmdk", ["-o", "subformat=streamOptimized"]), ("vhdx", []), ("vpc", []), ("qcow2", [])):
        out = tmp_path / f"d.{fmt}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw), str(out)], check=True)
        facts = image_facts(out)
        assert facts.format == fmt and facts.virtual_size >= 8 * 1024 * 1024
    assert image_facts(tmp_path / "d.vmdk").stream_optimized
    assert image_facts(raw).format == "raw"
