"""Reaching guests: the SSH banner as the readiness signal, and SSH sessions with a pinned host key.

Through qemu's user networking a TCP connect succeeds before the guest listens, so readiness
is the ``SSH-`` banner arriving: connect, wait at most ``recv_timeout`` (0.25 s) for bytes,
reconnect on silence or EOF. That keeps detection delay well under 100 ms and avoids slirp's
SYN backoff turning timings into 1 s steps.
"""

from __future__ import annotations

import base64
import io
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from virtproof.core.secretfile import write_secret
from virtproof.lab.platform import Endpoint, GuestAccess, GuestUnreachable


class HostKeyMismatch(paramiko.SSHException):
    """The guest presented a host key other than the pinned one."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def generate_client_key(path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600); return the public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    write_secret(path, private, replace=True)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " virtproof"
    path.with_suffix(".pub").write_text(line + "\n")
    return line


def banner_recv_timeout(elapsed: float, floor: float = 0.25, share: float = 0.05, ceiling: float = 3.0) -> float:
    """How long to wait for the banner on one connection, ``elapsed`` seconds into the wait.

    Short (``floor``) while a guest boots normally, then ``share`` of the time already waited,
    up to ``ceiling``. Every abandoned connection costs the guest a dropbear fork; on a host
    with more booting guests than cores the banner takes longer than 0.25 s to come, and fixed
    0.25 s polling both never waits long enough and keeps the guest busy forking (a storm of
    40 TCG guests on 2 cores never reached SSH). Detection delay stays within ~5 % of the wait.
    """
    return min(max(floor, elapsed * share), ceiling)


def wait_for_banner(
    endpoint: Endpoint,
    timeout: float,
    *,
    recv_timeout: float = 0.25,
    interval: float = 0.02,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Block until ``endpoint`` sends an SSH banner; return the time it arrived (epoch seconds)."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise GuestUnreachable(f"{endpoint}: the VM stopped before SSH answered")
        now = time.monotonic()
        wait = min(banner_recv_timeout(now - start, floor=recv_timeout), max(deadline - now, 0.05))
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=wait) as sock:
                sock.settimeout(wait)
                data = sock.recv(8)
                if data.startswith(b"SSH-"):
                    return time.time()
        except OSError:
            pass
        time.sleep(interval)
    raise GuestUnreachable(f"{endpoint}: no SSH banner within {timeout:.0f} s")


class _PinnedKey(paramiko.MissingHostKeyPolicy):
    """Accept only the pinned key; anything else (unknown or different) is refused."""

    def __init__(self, pinned: paramiko.PKey) -> None:
        self.pinned = pinned

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key.get_name() == self.pinned.get_name() and key.asbytes() == self.pinned.asbytes():
            return
        raise HostKeyMismatch(
            f"{hostname}: host key {key.get_name()} {key.get_fingerprint().hex()} is not the pinned "
            f"{self.pinned.get_name()} {self.pinned.get_fingerprint().hex()}; refusing to connect"
        )


def parse_public_key(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    data = base64.b64decode(blob)
    if kind == "ssh-ed25519":
        return paramiko.Ed25519Key(data=data)
    if kind.startswith("ecdsa-"):
        return paramiko.ECDSAKey(data=data)
    if kind == "ssh-rsa":
        return paramiko.RSAKey(data=data)
    raise ValueError(f"unsupported host key type {kind}")


class GuestSession:
    """An SSH session into one guest, with the host key checked against the pinned one."""

    def __init__(self, endpoint: Endpoint, access: GuestAccess, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(_PinnedKey(parse_public_key(access.host_key)))
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(access.private_key.read_text()))
        try:
            self.client.connect(
                endpoint.host,
                endpoint.port,
                username=access.user,
                pkey=pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyMismatch:
            self.client.close()
            raise
        except (paramiko.SSHException, OSError) as exc:
            self.client.close()
            raise GuestUnreachable(f"{endpoint}: SSH login failed: {exc}") from exc

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, OSError) as exc:
            raise GuestUnreachable(f"{self.endpoint}: {command!r} failed: {exc}") from exc
        result = CommandResult(command, status, out, err)
        if check and not result.ok:
            raise GuestUnreachable(f"{self.endpoint}: {command!r} exited {status}: {err.strip()[:200]}")
        return result

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> GuestSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
