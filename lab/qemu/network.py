"""Lab nodes on the host network: network namespaces joined by a bridge, or loopback addresses.

netns mode (root): a bridge ``vpbr<token>`` in the root namespace holds the lab's first
address; each node is a namespace ``vp-<lab-id>-n<i>`` with a veth into the bridge and its own
address in 198.18.0.0/15 (reserved for benchmarking, RFC 2544). The harness reaches nodes
through the bridge, and migration streams go node to node over it.
loopback mode (no root needed): nodes are addresses 127.100.x.y on the host's loopback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from virtproof.core.processes import is_root
from virtproof.lab.qemu.state import LabState, NetworkMode, NodeState, subnet_addresses, token


class NetworkError(RuntimeError):
    """The host network could not be set up as the lab needs."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError as exc:
        raise NetworkError("the `ip` command (iproute2) is not installed") from exc
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def netns_supported() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if not is_root():
        return "network: netns needs root (use network: loopback)"
    probe = f"vp-probe-{os.getpid()}"
    proc = _ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create network namespaces: {proc.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(count)]


def create_network(
    lab_id: str, count: int, network: NetworkMode, subnet_index: int
) -> tuple[tuple[NodeState, ...], str | None, str]:
    """Create the nodes; returns (nodes, bridge name or None, bridge/harness address)."""
    bridge_addr, node_addrs = subnet_addresses(subnet_index, network)
    if network == "loopback":
        return tuple(NodeState(name, node_addrs[i]) for i, name in enumerate(node_names(count))), None, bridge_addr
    tok = token(lab_id)
    bridge = f"vpbr{tok}"
    _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "add", f"{bridge_addr}/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    nodes: list[NodeState] = []
    for i, name in enumerate(node_names(count)):
        ns = f"vp-{lab_id}-n{i}"
        host_if, node_if = f"vph{tok}{i}", f"vpn{tok}{i}"
        # Record the node before creating it, so a failure half-way still cleans up.
        nodes.append(NodeState(name, node_addrs[i], ns, host_if, node_if))
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", node_if, "netns", ns)
        _ip("link", "set", host_if, "master", bridge, "up")
        _ip("-n", ns, "addr", "add", f"{node_addrs[i]}/24", "dev", node_if)
        _ip("-n", ns, "link", "set", node_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    return tuple(nodes), bridge, bridge_addr


def destroy_network(lab_id: str, nodes: Sequence[NodeState], bridge: str | None) -> list[str]:
    """Remove namespaces and links of the lab; returns what was removed. Never raises."""
    removed = []
    for node in nodes:
        if node.veth_host and _ip("link", "delete", node.veth_host, check=False).returncode == 0:
            removed.append(f"link {node.veth_host}")
        if node.netns and _ip("netns", "delete", node.netns, check=False).returncode == 0:
            removed.append(f"netns {node.netns}")
    if bridge and _ip("link", "delete", bridge, check=False).returncode == 0:
        removed.append(f"link {bridge}")
    return removed


def set_node_link(state: LabState, node: str, up: bool) -> None:
    """Take a node's link to the bridge down or up (a network fault between nodes)."""
    veth = state.node(node).veth_host
    if veth is None:
        raise NetworkError(f"node {node} has no link to take down (network: {state.network})")
    _ip("link", "set", veth, "up" if up else "down")


def exec_prefix(node: NodeState) -> list[str]:
    """argv prefix that runs a command inside the node."""
    return ["ip", "netns", "exec", node.netns] if node.netns else []


def list_netns() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def list_links() -> list[str]:
    proc = _ip("-o", "link", "show", check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names
