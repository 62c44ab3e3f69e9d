"""Run steps on a host over SSH (paramiko): key auth, pinned or recorded host keys, sudo."""

from __future__ import annotations

import logging
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from virtproof.lab.clusters.steps import Result

log = logging.getLogger("virtproof.lab.clusters")


class SSHError(RuntimeError):
    """The host could not be reached or refused our key or presented the wrong host key."""


def _load_key(path: Path) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(path))
        except paramiko.SSHException:
            continue
        except OSError as exc:
            raise SSHError(f"{path}: cannot read SSH key: {exc.strerror}") from None
    raise SSHError(f"{path}: not a supported private key (ed25519, ecdsa, rsa)")


class _Pinned(paramiko.MissingHostKeyPolicy):
    def __init__(self, expected: str | None, known_hosts: Path) -> None:
        self.expected = expected
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        line = f"{key.get_name()} {key.get_base64()}"
        if self.expected is not None:
            if " ".join(self.expected.split()[:2]) != line:
                raise SSHError(f"{hostname}: host key {line[:40]}... is not the pinned one")
            return
        # trust on first use: remember it; a later change is refused by paramiko's known_hosts check
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))


@dataclass
class SSHExecutor:
    address: str
    user: str
    key: Path
    port: int = 22
    host_key: str | None = None
    known_hosts: Path = Path("known_hosts")
    connect_timeout_s: float = 20.0
    name: str = ""
    _client: paramiko.SSHClient | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.user}@{self.address}:{self.port}"

    def _connect(self) -> paramiko.SSHClient:
        if self._client is not None and self._client.get_transport() is not None \
                and self._client.get_transport().is_active():  # type: ignore[union-attr]
            return self._client
        client = paramiko.SSHClient()
        if self.known_hosts.exists() and self.host_key is None:
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_Pinned(self.host_key, self.known_hosts))
        try:
            client.connect(self.address, port=self.port, username=self.user, pkey=_load_key(self.key),
                           timeout=self.connect_timeout_s, banner_timeout=self.connect_timeout_s,
                           auth_timeout=self.connect_timeout_s, allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise SSHError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        self._client = client
        return client

    def execute(self, script: str, stdin: str | None, timeout_s: float) -> Result:
        command = f"sh -c {shlex.quote(script)}"
        if self.user != "root":
            command = f"sudo -n {command}"
        with self._lock:
            client = self._connect()
            try:
                transport = client.get_transport()
                if transport is None:
                    raise paramiko.SSHException("no transport")
                chan = transport.open_session(timeout=self.connect_timeout_s)
                chan.set_combine_stderr(True)
                chan.settimeout(timeout_s)
                chan.exec_command(command)
                if stdin is not None:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()
                chunks = []
                while True:
                    data = chan.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                status = chan.recv_exit_status()
                chan.close()
                output = b"".join(chunks).decode(errors="replace")
            except TimeoutError:
                return Result(124, f"timed out after {timeout_s:.0f} s")
            except (paramiko.SSHException, OSError) as exc:
                self.close()
                return Result(255, f"SSH: {exc}")
        return Result(status, output[-4000:])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
