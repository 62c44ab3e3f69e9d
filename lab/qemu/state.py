"""A qemu lab's on-disk state: every resource is named after the lab id and recorded here.

``<state root>/labs/<lab-id>/lab.json`` describes the lab (nodes, addresses, owner process);
``vms/<vm>/`` holds each VM's pid file, QMP socket, console log and scratch disks. The state
root is ``virtproof.core.statedir.state_root()`` (private, owner-checked). Names on the host carry the lab id:
network namespaces ``vp-<lab-id>-n<i>``, qemu ``-name guest=vp-<lab-id>-<vm>``, and links
``vp*<token>*`` where token is a 6-hex digest of the lab id (interface names are short).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from virtproof.core.processes import Owner
from virtproof.core.statedir import state_root

NetworkMode = Literal["netns", "loopback"]
SUBNETS = 512  # /24s inside 198.18.0.0/15 (RFC 2544 benchmarking range)


def token(lab_id: str) -> str:
    return hashlib.sha1(lab_id.encode()).hexdigest()[:6]


@dataclass(frozen=True)
class NodeState:
    name: str  # "node0"
    address: str  # where qemu binds host forwards and migration streams
    netns: str | None = None
    veth_host: str | None = None
    veth_node: str | None = None


@dataclass(frozen=True)
class LabState:
    lab_id: str
    network: NetworkMode
    subnet_index: int
    nodes: tuple[NodeState, ...]
    bridge: str | None
    bridge_address: str | None
    owner_pid: int
    owner_boot_id: str
    persistent: bool = False
    scenario: str = ""
    accel: str = "tcg"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return lab_dir(self.lab_id)

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"lab {self.lab_id} has no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def owner_alive(self) -> bool:
        # a lab's state lives on this host, and so does its owner
        return Owner(self.owner_pid, self.owner_boot_id, os.uname().nodename).alive()

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / ".lab.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.directory / "lab.json")

    @classmethod
    def load(cls, lab_id: str) -> LabState:
        raw = json.loads((lab_dir(lab_id) / "lab.json").read_text())
        raw["nodes"] = tuple(NodeState(**n) for n in raw["nodes"])
        return cls(**raw)


def lab_dir(lab_id: str) -> Path:
    return state_root() / "labs" / lab_id


def list_lab_ids() -> list[str]:
    labs = state_root() / "labs"
    if not labs.is_dir():
        return []
    return sorted(p.name for p in labs.iterdir() if (p / "lab.json").exists())


@contextmanager
def allocation_lock() -> Iterator[None]:
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".alloc.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def free_subnet_index(reserved_dir: Path) -> int:
    """Lowest /24 index no other lab uses. Call under ``allocation_lock``; reserves it in ``reserved_dir``."""
    used: set[int] = set()
    labs = state_root() / "labs"
    if labs.is_dir():
        for marker in [*labs.glob("*/subnet"), *labs.glob("*/*/subnet")]:  # */l2/subnet: guest segments
            try:
                used.add(int(marker.read_text()))
            except (OSError, ValueError):
                continue
    for index in range(SUBNETS):
        if index not in used:
            reserved_dir.mkdir(parents=True, exist_ok=True)
            (reserved_dir / "subnet").write_text(str(index))
            return index
    raise RuntimeError(f"all {SUBNETS} lab subnets are in use; run `virtproof lab clean`")


def subnet_addresses(index: int, network: NetworkMode) -> tuple[str, list[str]]:
    """(bridge address, node addresses for up to 200 nodes) of subnet ``index``."""
    if network == "loopback":
        base = ipaddress.IPv4Address("127.100.0.0") + index * 256
    else:
        base = ipaddress.IPv4Address("198.18.0.0") + index * 256
    return str(base + 1), [str(base + 2 + i) for i in range(200)]
