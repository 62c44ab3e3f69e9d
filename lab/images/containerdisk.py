"""A KubeVirt containerDisk as an OCI image archive, written with our own code (no registry, no
container engine): ``virtproof images export micro --containerdisk OUT.tar``.

KubeVirt's containerDisk convention (kubevirt.io docs "Container Disk Workflow", and
``pkg/container-disk/container-disk.go`` at v1.9.0): one layer holding the disk image under
``/disk/``, readable by the qemu user (uid/gid 107). The archive is an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/...``; opencontainers/image-spec v1.1
``image-layout.md``) packed in a tar, which ``skopeo copy oci-archive:OUT.tar
docker://REGISTRY/IMAGE:TAG`` pushes to the user's registry.

Deterministic: the same disk gives the same digests (fixed mtimes, owners, gzip without a name or
a timestamp), so a rebuild does not make a new image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

QEMU_UID = 107  # the qemu user in virt-launcher's image
DISK_DIR = "disk"
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = 0


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass(frozen=True)
class ContainerDisk:
    path: Path  # the archive
    tag: str
    manifest_digest: str
    layer_digest: str
    disk_name: str


def _entry(name: str, *, size: int = 0, directory: bool = False, mode: int = 0o444) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size, info.mode, info.mtime = size, mode, EPOCH
    info.uid = info.gid = QEMU_UID
    info.uname = info.gname = ""
    return info


def _layer(disk: Path, disk_name: str) -> tuple[bytes, str]:
    """The gzipped layer and the digest of its uncompressed tar (the config's diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry(f"{DISK_DIR}/", directory=True, mode=0o555))
        with disk.open("rb") as source:
            tar.addfile(_entry(f"{DISK_DIR}/{disk_name}", size=disk.stat().st_size, mode=0o440), source)
    plain = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", filename="", mtime=EPOCH) as gz:
        gz.write(plain)
    return packed.getvalue(), "sha256:" + hashlib.sha256(plain).hexdigest()


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_containerdisk(disk: Path, out: Path, tag: str, *, disk_name: str = "disk.qcow2") -> ContainerDisk:
    """Write ``disk`` (qcow2 or raw) as a containerDisk OCI archive at ``out``, tagged ``tag``."""
    layer_data, diff_id = _layer(disk, disk_name)
    layer = Blob(LAYER_MEDIA, layer_data)
    config = Blob(CONFIG_MEDIA, _json({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))  # fmt: skip
    manifest = Blob(MANIFEST_MEDIA, _json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    }))  # fmt: skip
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest.descriptor(annotations={REF_NAME: tag})]})  # fmt: skip
    files = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]
    files += [(f"blobs/sha256/{b.digest.split(':', 1)[1]}", b.data) for b in (layer, config, manifest)]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs/", "blobs/sha256/"):
            info = _entry(directory, directory=True, mode=0o755)
            info.uid = info.gid = 0
            tar.addfile(info)
        for name, data in files:
            info = _entry(name, size=len(data), mode=0o644)
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    partial.replace(out)
    return ContainerDisk(out, tag, manifest.digest, layer.digest, disk_name)


def dropbear_ed25519_key(private_seed: bytes, public: bytes) -> bytes:
    """An ed25519 host key in dropbear's own file format (dropbear ``signkey_ed25519.c``
    ``buf_put_ed25519_priv_key``: the key type as an SSH string, then the 32-byte seed and the
    32-byte public key as one 64-byte string)."""
    if len(private_seed) != 32 or len(public) != 32:
        raise ValueError("ed25519 seed and public key are 32 bytes each")
    kind = b"ssh-ed25519"
    return len(kind).to_bytes(4, "big") + kind + (64).to_bytes(4, "big") + private_seed + public
