"""The micro guest image: built from Debian packages, deterministic archive, modules in order."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from virtproof.lab.images import cpio
from virtproof.lab.images.elf import load_order, module_name
from virtproof.lab.images.micro import VIRTIO_MODULES, GuestImage
from virtproof.lab.qemu.accel import choose_accel


def _cpio_names(path: Path) -> list[str]:
    out = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(path.read_bytes()), capture_output=True, check=True
    ).stdout
    return out.decode().split()


def test_cpio_archives_are_deterministic_and_readable(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/hello").write_text("#!/bin/sh\necho hi\n")
    (tree / "bin/hello").chmod(0o755)
    (tree / "link").symlink_to("bin/hello")
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    cpio.write_cpio(tree, a, devices=(cpio.DeviceNode("/dev/console", 5, 1),))
    (tree / "bin/hello").touch()  # a new mtime must not change the archive
    cpio.write_cpio(tree, b, devices=(cpio.DeviceNode("/dev/console", 5, 1),))
    assert a.read_bytes() == b.read_bytes()
    assert _cpio_names(a) == ["bin", "bin/hello", "link", "dev/console"]


def test_micro_image_has_what_the_guest_needs(micro_image: GuestImage) -> None:
    assert micro_image.kernel is not None and micro_image.initrd is not None
    assert micro_image.host_key.startswith("ssh-ed25519 ")
    names = set(_cpio_names(micro_image.initrd))
    for needed in (
        "init",
        "bin/busybox",
        "usr/sbin/dropbear",
        "etc/dropbear/dropbear_ed25519_host_key",
        "bin/vp-dirty",
        "etc/virtproof/modules",
        "www/index.html",
        "dev/console",
    ):
        assert needed in names, needed
    meta = json.loads((micro_image.directory / "image.json").read_text())
    assert meta["initrd_sha256"] == hashlib.sha256(micro_image.initrd.read_bytes()).hexdigest()
    assert micro_image.directory.name == f"micro-{micro_image.digest[:16]}"


def test_modules_load_after_their_dependencies(micro_image: GuestImage, tmp_path: Path) -> None:
    listed = (
        subprocess.run(
            ["cpio", "-i", "--quiet", "--to-stdout", "etc/virtproof/modules"],
            input=gzip.decompress(micro_image.initrd.read_bytes()),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    order = [module_name(Path(p)) for p in listed]
    # What each module's .modinfo says it needs must be loaded before it (the virtio-net chain).
    before = [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio_pci_modern_dev", "virtio_pci"),
        ("virtio_pci_legacy_dev", "virtio_pci"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
        ("virtio", "virtio_net"),
        ("scsi_mod", "virtio_scsi"),
        ("libata", "ata_piix"),
    ]
    for first, then in before:
        assert order.index(first) < order.index(then), (first, then, order)
    assert set(VIRTIO_MODULES) <= set(order) | {"sd_mod"}


def test_load_order_skips_built_ins_and_normalises_dashes(tmp_path: Path) -> None:
    assert load_order(["ext4", "not-a-module"], tmp_path) == []


def test_accel_tcg_is_honoured_and_auto_decides_by_booting(micro_image: GuestImage) -> None:
    assert choose_accel("tcg", micro_image).accel == "tcg"
    auto = choose_accel("auto", micro_image)
    assert auto.accel in ("kvm", "tcg")
    if auto.accel == "tcg":
        assert "auto chose tcg" in auto.reason


@pytest.mark.parametrize("name", ["micro"])
def test_images_cli_lists_the_built_image(name: str, virtproof_cmd: list[str], micro_image: GuestImage) -> None:
    out = subprocess.run([*virtproof_cmd, "images", "list"], capture_output=True, text=True, check=True).stdout
    assert micro_image.digest[:16] in out


def test_images_build_unknown_name_is_a_usage_error(virtproof_cmd: list[str]) -> None:
    res = subprocess.run([*virtproof_cmd, "images", "build", "nosuch"], capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert "unknown image 'nosuch'" in res.stderr
