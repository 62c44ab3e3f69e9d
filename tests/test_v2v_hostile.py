"""Hostile and broken sources given to ``virtproof premigrate`` (which runs as root): each is one
line and exit 2, or a ``blocked`` verdict, never a traceback, a hang, or a host file opened.

"A host file" is played by a FIFO: whatever opens it for reading blocks until a writer comes,
so a test whose image names one would hang (and fail on its timeout) if anything followed the
name; and a non-blocking writer can tell that nobody has it open."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from virtproof.cli import main
from virtproof.premigrate.initramfs import MAX_UNPACKED, InitramfsError, list_initramfs

MBR = b"\0" * 510 + b"\x55\xaa"


def _premigrate(tmp_path: Path, capsys: pytest.CaptureFixture[str], *sources: Path) -> tuple[int, str]:
    code = main(["premigrate", *map(str, sources), "--results", str(tmp_path / "results"), "--no-bare"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err.strip()


def _one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path, *words: str) -> str:
    code, err = _premigrate(tmp_path, capsys, source)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "results").exists(), "a run directory was made for bad input"
    return err


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    """A FIFO standing for a host file (e.g. /etc/shadow) that must never be opened."""
    fifo = tmp_path / "host-secret"
    os.mkfifo(fifo)
    return fifo


def _nobody_reads(fifo: Path) -> bool:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.ENXIO  # no reader has it open
    os.close(fd)
    return False


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def test_qcow2_backing_file_on_the_host_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil), "1G")
    _one_line_exit_2(tmp_path, capsys, evil, "evil.qcow2", "backing file (/etc/shadow)")


def test_backing_file_is_never_opened(tmp_path: Path, capsys: pytest.CaptureFixture[str], host_file: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", "-u", str(evil), "1G")
    _one_line_exit_2(tmp_path, capsys, evil, "backing file")
    assert _nobody_reads(host_file)


def test_vmdk_extents_outside_or_linked_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host_file: Path
) -> None:
    def descriptor(name: str, extent: str) -> Path:
        path = tmp_path / name
        path.write_text(
            '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
            f'RW 2048 FLAT "{extent}" 0\n\nddb.adapterType = "lsilogic"\n'
        )
        return path

    _one_line_exit_2(tmp_path, capsys, descriptor("abs.vmdk", str(host_file)), "extent", "not a file beside")
    _one_line_exit_2(tmp_path, capsys, descriptor("up.vmdk", "../etc/shadow"), "not a file beside")
    (tmp_path / "link-flat.vmdk").symlink_to("/etc/shadow")
    _one_line_exit_2(tmp_path, capsys, descriptor("link.vmdk", "link-flat.vmdk"), "link")
    os.link(tmp_path / "abs.vmdk", tmp_path / "hard-flat.vmdk")
    _one_line_exit_2(tmp_path, capsys, descriptor("hard.vmdk", "hard-flat.vmdk"), "hard-linked")
    (tmp_path / "parent.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="monolithicSparse"\n'
        f'parentFileNameHint="{host_file}"\nRW 2048 SPARSE "parent.vmdk"\n'
    )
    _one_line_exit_2(tmp_path, capsys, tmp_path / "parent.vmdk", "parent (backing) file")
    assert _nobody_reads(host_file)


def test_qcow2_external_data_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "data.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'elsewhere.raw'}", str(evil), "64M")
    _one_line_exit_2(tmp_path, capsys, evil, "external data file")


def test_petabyte_virtual_size_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(huge), "1P")
    _one_line_exit_2(tmp_path, capsys, huge, "1.0 PiB", "64 TiB at most")


def test_truncated_and_corrupt_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as fh:
        fh.write(MBR)
        for block in range(64):  # 64 MiB of data qcow2 must keep
            fh.seek((block + 1) * 1024 * 1024)
            fh.write(os.urandom(4096))
    full = tmp_path / "full.qcow2"
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(full))
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    _one_line_exit_2(tmp_path, capsys, cut, "truncated or corrupt qcow2")
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"QFI\xfb" + os.urandom(8192))
    _one_line_exit_2(tmp_path, capsys, garbage, "garbage.qcow2")
    stream = tmp_path / "s.vmdk"
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(stream))
    compressed = tmp_path / "d.raw.gz"
    compressed.write_bytes(b"\x1f\x8b\x08" + os.urandom(100))
    _one_line_exit_2(tmp_path, capsys, compressed, "compressed")


def _ova(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data[info.name]) if info.name in data else None)
    return path


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def _ovf(disk: str = "d.vmdk") -> bytes:
    from virtproof.premigrate.fixtures.ova import MAC, OVF_TEMPLATE

    return OVF_TEMPLATE.format(disk=disk, disk_size=512, capacity_mib=1, name="t", mac=MAC).encode()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("dotdot", "points outside the archive"),
        ("absolute", "points outside the archive"),
        ("symlink", "is a link"),
        ("hardlink", "is a link"),
        ("device", "device, FIFO or special file"),
        ("fifo", "device, FIFO or special file"),
        ("ovf-names-path", "not a file of the archive"),
        ("size-lie", "truncated"),
        ("doctype", "DOCTYPE"),
    ],
)
def test_hostile_ova_members(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expect: str) -> None:
    members: list[tarfile.TarInfo] = []
    data: dict[str, bytes] = {}
    ovf_disk = "d.vmdk"
    extra: tarfile.TarInfo
    if case == "dotdot":
        extra, data["../../etc/cron.d/x"] = _file("../../etc/cron.d/x", b"* * * * * root id\n")
    elif case == "absolute":
        extra, data["/etc/cron.d/x"] = _file("/etc/cron.d/x", b"x")
    elif case in ("symlink", "hardlink"):
        extra = tarfile.TarInfo("link.vmdk")
        extra.type = tarfile.SYMTYPE if case == "symlink" else tarfile.LNKTYPE
        extra.linkname = "/etc/shadow"
    elif case in ("device", "fifo"):
        extra = tarfile.TarInfo("dev.vmdk")
        extra.type = tarfile.CHRTYPE if case == "device" else tarfile.FIFOTYPE
        extra.devmajor, extra.devminor = 1, 3
    elif case == "ovf-names-path":
        ovf_disk = "../d.vmdk"
        extra, data["other"] = _file("other", b"x")
    else:
        extra, data["other"] = _file("other", b"x")
    ovf = _ovf(ovf_disk)
    if case == "doctype":
        ovf = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + ovf.split(b"?>", 1)[1]
    info, data["t.ovf"] = _file("t.ovf", ovf)
    members.append(info)
    disk, data["d.vmdk"] = _file("d.vmdk", MBR + bytes(65536))
    members += [extra, disk]
    path = _ova(tmp_path / f"{case}.ova", members, data)
    if case == "size-lie":  # the archive ends inside the disk: its header claims more than there is
        with tarfile.open(path) as tar:
            member = tar.getmember("d.vmdk")
        path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])
    _one_line_exit_2(tmp_path, capsys, path, f"{case}.ova", expect)
    assert not Path("/etc/cron.d/x").exists()


def test_sparse_and_compressed_ovas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "t.ovf").write_bytes(_ovf())
    with open(work / "d.vmdk", "wb") as fh:
        fh.truncate(16 * 1024**3)  # 16 GiB that a sparse tar member would expand to
    subprocess.run(["tar", "--sparse", "-cf", str(tmp_path / "sparse.ova"), "-C", str(work), "t.ovf", "d.vmdk"],
                   check=True, timeout=60)  # fmt: skip
    _one_line_exit_2(tmp_path, capsys, tmp_path / "sparse.ova", "sparse tar member")
    (work / "d.vmdk").unlink()
    (work / "d.vmdk").write_bytes(MBR)
    subprocess.run(["tar", "-czf", str(tmp_path / "z.ova"), "-C", str(work), "t.ovf", "d.vmdk"], check=True)
    _one_line_exit_2(tmp_path, capsys, tmp_path / "z.ova", "compressed OVA")


def test_gzip_bomb_initramfs_is_bounded() -> None:
    """A guest's initramfs that inflates past MAX_UNPACKED is refused, not unpacked into memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(16 * 1024 * 1024)
    bomb = b"".join(packer.compress(chunk) for _ in range(MAX_UNPACKED // len(chunk) + 2)) + packer.flush()
    assert len(bomb) < 2 * 1024 * 1024
    with pytest.raises(InitramfsError, match="decompression bomb"):
        list_initramfs(bomb)


def test_sparse_bomb_raw_disk_is_blocked_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """15 TiB of holes around an MBR: hashed without reading the holes, inspected, blocked."""
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as fh:
        fh.write(MBR)
        fh.truncate(15 * 1024**4)
    code = main(["premigrate", str(sparse), "--json", "--results", str(tmp_path / "results"), "--no-bare"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    report = json.loads(captured.out)["sources"][0]
    assert report["verdict"] == "blocked" and report["boot"] is None
    assert any(f["code"] == "no-os" for f in report["findings"]), report["findings"]
    assert report["timings_s"]["hash"] < 30  # not a gate on speed: 15 TiB read would take hours


def test_vmx_disk_paths_are_not_followed(tmp_path: Path, capsys: pytest.CaptureFixture[str], host_file: Path) -> None:
    vmx = tmp_path / "web01.vmx"
    vmx.write_text(
        f'displayName = "web01"\nnumvcpus = "2"\nmemSize = "2048"\nguestOS = "debian12-64"\n'
        f'scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\nscsi0:0.present = "TRUE"\n'
        f'scsi0:0.fileName = "{host_file}"\nscsi0:1.present = "TRUE"\nscsi0:1.fileName = "../../etc/shadow"\n'
    )
    code = main(["premigrate", str(vmx), "--json", "--results", str(tmp_path / "results")])
    report = json.loads(capsys.readouterr().out)["sources"][0]
    assert code == 1 and report["kind"] == "vmx" and report["image"] is None
    assert [f["code"] for f in report["findings"]].count("vmware-disk-not-given") == 2
    assert report["verdict"] == "needs-fixes" and "metadata only" in report["reasons"][0]
    assert _nobody_reads(host_file)


def _cli_in_subprocess(
    tmp_path: Path, prelude: str, source: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    code = (
        f"import sys\n{prelude}\nfrom virtproof.cli import main\n"
        f"sys.exit(main(['premigrate', {str(source)!r}, '--results', {str(tmp_path / 'r')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr.strip()


def test_host_problems_are_exit_3_not_verdicts(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as fh:
        fh.write(MBR)
        fh.truncate(64 * 1024 * 1024)
    code, err = _cli_in_subprocess(tmp_path, "sys.modules['guestfs'] = None  # as if not installed", disk)
    assert code == 3 and "guestfs binding" in err and len(err.splitlines()) == 1, err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-img", "setpriv", "virt-v2v"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=False).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    code, err = _cli_in_subprocess(tmp_path, "", disk, {"PATH": str(bin_dir)})
    assert code == 3 and "qemu-system-x86_64" in err, err
    fake = bin_dir / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: -accel tcg: invalid accelerator tcg' >&2\nexit 1\n")
    fake.chmod(0o755)
    code, err = _cli_in_subprocess(tmp_path, "", disk, {"PATH": str(bin_dir)})
    assert code == 3 and "working TCG" in err and "invalid accelerator" in err, err
    assert not (tmp_path / "r").exists()
