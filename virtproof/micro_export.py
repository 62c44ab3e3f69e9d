"""``virtproof images export micro --containerdisk OUT.tar``: the micro guest as a KubeVirt
containerDisk a user pushes to their own registry (``skopeo copy oci-archive:OUT.tar docker://...``).

The disk is the micro guest's disk-booting variant (virtio drivers in its initramfs, extlinux on
an ext4 root; ``premigrate.fixtures.microdisk``), made personal for this export: a new SSH client
key is authorized on the kernel command line (``vp.key=``, read by the micro /init) and a new
dropbear host key replaces the build's, so the scenario can pin it. Both keys are written beside
the archive (``OUT.key``, mode 0600; ``OUT.pub``; ``OUT.host_key.pub``) and the command
prints the ``lab.images`` entry to paste into a KubeVirt scenario (``cloud_init: false``: the
micro guest reads no NoCloud data, so the key travels in the image).
"""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from virtproof.core.errors import UsageError
from virtproof.lab.guest import generate_client_key
from virtproof.lab.images.containerdisk import ContainerDisk, dropbear_ed25519_key, write_containerdisk
from virtproof.premigrate.fixtures.microdisk import micro_disk
from virtproof.premigrate.gfs import open_guestfs

EXTLINUX = "/boot/extlinux/extlinux.conf"
HOST_KEY = "/etc/dropbear/dropbear_ed25519_host_key"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,254}$")


@dataclass(frozen=True)
class MicroExport:
    archive: ContainerDisk
    private_key: Path
    host_key: str  # the public line to pin


def _personalize(disk: Path, client_public: str) -> str:
    """Authorize ``client_public`` and put a new host key in ``disk`` (qcow2); the host key's public line."""
    host = Ed25519PrivateKey.generate()
    seed = host.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())  # fmt: skip
    public = host.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_arg = base64.b64encode(client_public.encode()).decode()
    with open_guestfs([(disk, "qcow2", False)], memsize_mib=256) as g:
        g.mount("/dev/sda1", "/")
        conf = str(g.cat(EXTLINUX))
        if "  APPEND " not in conf:
            raise UsageError(f"the micro disk's {EXTLINUX} has no APPEND line")
        g.write(EXTLINUX, re.sub(r"vp\.key=\S+ ?", "", conf).replace("  APPEND ", f"  APPEND vp.key={key_arg} "))
        g.write(HOST_KEY, dropbear_ed25519_key(seed, public))
        g.chmod(0o600, HOST_KEY)
        g.umount_all()
    wire = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + public
    return "ssh-ed25519 " + base64.b64encode(wire).decode()


def export_micro_containerdisk(out: Path, tag: str) -> MicroExport:
    """Build (cached) the micro disk, personalize a copy, write the containerDisk archive and keys."""
    if not _TAG.match(tag):
        raise UsageError(f"--tag {tag!r}: not an image reference (e.g. registry.example/virtproof/micro:1)")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; give the archive's file name (e.g. micro.tar)")
    raw = micro_disk("virtio").raw
    private_key = out.with_name(out.name + ".key")
    with tempfile.TemporaryDirectory(prefix="vp-export-") as scratch:
        disk = Path(scratch) / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(disk)],
                       check=True, capture_output=True)  # fmt: skip
        client_public = generate_client_key(private_key)
        host_key = _personalize(disk, client_public)
        archive = write_containerdisk(disk, out, tag)
    out.with_name(out.name + ".host_key.pub").write_text(host_key + "\n")
    return MicroExport(archive, private_key, host_key)
