"""Per-run SSH material for cloud-init images: a client key and a pinned ed25519 host key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from virtproof.core.secretfile import write_secret


@dataclass(frozen=True)
class RunKeys:
    client_private: Path
    client_public: str
    host_private_pem: str
    host_public: str  # "ssh-ed25519 AAAA..."


def _write_private(path: Path, data: bytes) -> None:
    write_secret(path, data, replace=True)


def _openssh(key: Ed25519PrivateKey) -> tuple[bytes, str]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def run_keys(state_dir: Path) -> RunKeys:
    """Create (or reuse) the run's keys under ``state_dir``."""
    client_path, host_path = state_dir / "id_ed25519", state_dir / "host_ed25519"
    if not client_path.exists():
        private, public = _openssh(Ed25519PrivateKey.generate())
        _write_private(client_path, private)
        client_path.with_suffix(".pub").write_text(public + " virtproof\n")
    if not host_path.exists():
        private, public = _openssh(Ed25519PrivateKey.generate())
        _write_private(host_path, private)
        host_path.with_suffix(".pub").write_text(public + "\n")
    return RunKeys(
        client_private=client_path,
        client_public=client_path.with_suffix(".pub").read_text().strip(),
        host_private_pem=host_path.read_text(),
        host_public=host_path.with_suffix(".pub").read_text().strip(),
    )
