"""One L2 segment for the guests of every node, so a guest keeps its address when it moves.

Why this shape: a live-migrated guest keeps its MAC and IP; what must follow it is the network
path. Nodes are network namespaces, and a tap device has to exist in the namespace where its
qemu runs (qemu opens it by name there), while a bridge port must live in the bridge's own
namespace. So each node gets a bridge *inside* its namespace holding its taps, and a veth from
that node bridge to one segment bridge in the root namespace::

    harness (root ns) -- vpg<tok> (198.18.M.1/24) --veth-- [node0 ns: vpgbr -- tap(s) -- qemu]
                                              \\--veth-- [node1 ns: vpgbr -- tap(s) -- qemu]

The harness reaches every guest at the same 198.18.M.X before and after a move. After a
migration the destination qemu announces the guest (self-announce RARPs, and the virtio-net
guest announce), which teaches the root bridge the guest's MAC now lives behind the other
node's veth. The segment is separate from the nodes' own link (``vph<tok><i>``): taking a
node's link down cuts migration streams, not guest traffic, as on a platform whose migration
network is not the pod network.

The segment's /24 is a second subnet of the lab in 198.18.0.0/15, reserved through the lab's
allocator (``<lab dir>/l2/subnet``) so no other lab takes it. It is made on first use; root
links carry the lab token (swept by the lab's teardown), the rest dies with the namespaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtproof.lab.qemu.network import NetworkError
from virtproof.lab.qemu.state import LabState, NodeState, allocation_lock, free_subnet_index, subnet_addresses, token

NODE_BRIDGE = "vpgbr"  # inside each node namespace
FIRST_HOST = 10  # guests get .10 .. .250
LAST_HOST = 250


@dataclass(frozen=True)
class GuestAddress:
    """A guest's place on the segment: its IP (with prefix), gateway and MAC."""

    ip: str
    prefix: int
    gateway: str
    mac: str

    @property
    def cmdline(self) -> str:
        """The micro guest's kernel parameters for this static address."""
        return f"vp.ip={self.ip}/{self.prefix} vp.gw={self.gateway}"


@dataclass(frozen=True)
class Segment:
    lab_id: str
    subnet_index: int
    bridge: str  # in the root namespace, holds the gateway (harness) address
    gateway: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.gateway}/24", strict=False)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _dir(state: LabState) -> Path:
    return state.directory / "l2"


@contextmanager
def _locked(state: LabState) -> Iterator[Path]:
    directory = _dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield directory


def _root_links(state: LabState, i: int) -> tuple[str, str]:
    tok = token(state.lab_id)
    return f"vpgh{tok}{i}", f"vpgn{tok}{i}"


def ensure_segment(state: LabState) -> Segment:
    """The lab's guest segment, created on first use (idempotent, safe across processes)."""
    if state.network != "netns" or any(n.netns is None for n in state.nodes):
        raise NetworkError(f"an L2 guest segment needs a netns lab; lab {state.lab_id} is {state.network}")
    with _locked(state) as directory:
        meta = directory / "segment.json"
        if meta.exists():
            return Segment(**json.loads(meta.read_text()))
        with allocation_lock():
            index = free_subnet_index(directory)
        gateway, _ = subnet_addresses(index, "netns")
        segment = Segment(state.lab_id, index, f"vpg{token(state.lab_id)}", gateway)
        _ip("link", "add", segment.bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", segment.bridge)
        _ip("link", "set", segment.bridge, "up")
        for i, node in enumerate(state.nodes):
            assert node.netns is not None
            host_if, node_if = _root_links(state, i)
            _ip("-n", node.netns, "link", "add", NODE_BRIDGE, "type", "bridge")
            _ip("-n", node.netns, "link", "set", NODE_BRIDGE, "up")
            _ip("link", "add", host_if, "type", "veth", "peer", "name", node_if, "netns", node.netns)
            _ip("link", "set", host_if, "master", segment.bridge, "up")
            _ip("-n", node.netns, "link", "set", node_if, "master", NODE_BRIDGE, "up")
        meta.write_text(json.dumps(segment.__dict__))
        return segment


def _load_leases(directory: Path) -> dict[str, object]:
    path = directory / "leases.json"
    if path.exists():
        raw = json.loads(path.read_text())
        if isinstance(raw, dict):
            return raw
    return {"next_tap": 0, "addresses": {}}


def lease(state: LabState, segment: Segment, vm: str) -> GuestAddress:
    """The address of ``vm`` on the segment (the same one every time it is asked)."""
    with _locked(state) as directory:
        leases = _load_leases(directory)
        addresses = leases["addresses"]
        assert isinstance(addresses, dict)
        if vm not in addresses:
            used = set(addresses.values())
            base = segment.network.network_address
            for host in range(FIRST_HOST, LAST_HOST + 1):
                candidate = str(base + host)
                if candidate not in used:
                    addresses[vm] = candidate
                    break
            else:
                raise NetworkError(f"no free guest address left on segment {segment.network}")
            (directory / "leases.json").write_text(json.dumps(leases))
        ip = str(addresses[vm])
    octets = [int(x) for x in ip.split(".")]
    # Locally administered unicast MAC derived from the address: stable for the guest's life.
    mac = "52:56:{:02x}:{:02x}:{:02x}:{:02x}".format(*octets)
    return GuestAddress(ip, 24, segment.gateway, mac)


def release(state: LabState, vm: str) -> None:
    with _locked(state) as directory:
        leases = _load_leases(directory)
        addresses = leases["addresses"]
        assert isinstance(addresses, dict)
        if addresses.pop(vm, None) is not None:
            (directory / "leases.json").write_text(json.dumps(leases))


def create_tap(state: LabState, node: NodeState) -> str:
    """A new tap on ``node``'s segment bridge, made inside the node's namespace."""
    if node.netns is None:
        raise NetworkError(f"node {node.name} has no namespace for a tap")
    with _locked(state) as directory:
        leases = _load_leases(directory)
        number = int(str(leases["next_tap"]))
        leases["next_tap"] = number + 1
        (directory / "leases.json").write_text(json.dumps(leases))
    name = f"vpt{token(state.lab_id)}{number}"
    _ip("-n", node.netns, "tuntap", "add", "dev", name, "mode", "tap")
    try:
        _ip("-n", node.netns, "link", "set", name, "master", NODE_BRIDGE, "up")
    except NetworkError:
        delete_tap(node, name)
        raise
    return name


def delete_tap(node: NodeState, name: str) -> None:
    """Remove a tap (never raises: the namespace may already be gone)."""
    if node.netns is not None:
        _ip("-n", node.netns, "link", "delete", name, check=False)


def segment_of(state: LabState) -> Segment | None:
    meta = _dir(state) / "segment.json"
    if not meta.exists():
        return None
    return Segment(**json.loads(meta.read_text()))
