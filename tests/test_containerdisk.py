"""``virtproof images export micro --containerdisk``: an OCI archive that skopeo reads, whose one
layer holds /disk/disk.qcow2 for KubeVirt's qemu user, with the keys and scenario entry printed."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from virtproof.lab.images.containerdisk import QEMU_UID, dropbear_ed25519_key, write_containerdisk


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
    assert member is not None
    data = member.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def _layer_members(archive: Path) -> tuple[dict[str, object], list[tarfile.TarInfo], bytes]:
    with tarfile.open(archive) as tar:
        index = json.loads(_blob_named(tar, "index.json"))
        (desc,) = index["manifests"]
        manifest = json.loads(_blob(tar, desc["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        (layer_desc,) = manifest["layers"]
        layer = _blob(tar, layer_desc["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as inner:
        members = inner.getmembers()
        disk = inner.extractfile("disk/disk.qcow2")
        assert disk is not None
        head = disk.read(4)
        plain = hashlib.sha256(_gunzip(layer)).hexdigest()
    assert config["rootfs"]["diff_ids"] == [f"sha256:{plain}"]
    return {"tag": desc["annotations"]["org.opencontainers.image.ref.name"], "digest": desc["digest"]}, members, head


def _blob_named(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def test_the_same_disk_gives_the_same_digests(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    first = write_containerdisk(disk, tmp_path / "a.tar", "x/y:1")
    second = write_containerdisk(disk, tmp_path / "b.tar", "x/y:1")
    assert first.manifest_digest == second.manifest_digest and first.layer_digest == second.layer_digest
    meta, members, head = _layer_members(first.path)
    assert meta == {"tag": "x/y:1", "digest": first.manifest_digest} and head == b"QFI\xfb"
    by_name = {m.name.rstrip("/"): m for m in members}
    assert set(by_name) == {"disk", "disk/disk.qcow2"}
    assert all(m.uid == QEMU_UID and m.gid == QEMU_UID for m in members)
    assert by_name["disk"].isdir() and by_name["disk/disk.qcow2"].mode == 0o440


def test_dropbear_key_layout() -> None:
    blob = dropbear_ed25519_key(b"s" * 32, b"p" * 32)
    assert blob == b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x40" + b"s" * 32 + b"p" * 32
    with pytest.raises(ValueError, match="32 bytes"):
        dropbear_ed25519_key(b"short", b"p" * 32)


@pytest.mark.qemu
def test_export_micro_is_an_archive_skopeo_reads(tmp_path: Path, virtproof_cmd: list[str]) -> None:
    out = tmp_path / "micro.tar"
    run = subprocess.run([*virtproof_cmd, "images", "export", "micro", "--containerdisk", str(out),
                          "--tag", "reg.example/vp/micro:1"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "container_disk: REGISTRY/virtproof/micro:latest" in run.stdout and "cloud_init: false" in run.stdout
    meta, _, head = _layer_members(out)
    assert meta["tag"] == "reg.example/vp/micro:1" and head == b"QFI\xfb"
    inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], capture_output=True,
                                          text=True, check=True).stdout)  # fmt: skip
    assert inspected["Digest"] == meta["digest"] and inspected["Architecture"] == "amd64"
    key = out.with_name("micro.tar.key")
    assert key.stat().st_mode & 0o777 == 0o600
    host = out.with_name("micro.tar.host_key.pub").read_text().strip()
    assert host.startswith("ssh-ed25519 ") and host in run.stdout


def test_export_refuses_a_bad_tag(tmp_path: Path, virtproof_cmd: list[str]) -> None:
    run = subprocess.run([*virtproof_cmd, "images", "export", "micro", "--containerdisk", str(tmp_path / "m.tar"),
                          "--tag", "bad tag!"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "--tag 'bad tag!'" in run.stderr and "Traceback" not in run.stderr
