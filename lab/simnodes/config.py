"""The agent's configuration: ``<lab dir>/agent.json``, the control-plane lab's ``AgentContract``.

``{"lab_id", "kubeconfig": admin kubeconfig, "server", "ca_file", "nodes": [{"name", "address",
"netns"}], "qemu_lab_id": id or null, "paper": bool, "version": 1}``.

Beyond the contract the agent reads two optional keys: ``"pod_cidr"`` (where paper
pods take their IPs; default 198.19.128.0/18, inside the RFC 2544 benchmarking range and above
the /24s the qemu labs allocate first), ``"proxy": false`` to run without the NodePort proxy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTRACT_FILE = "agent.json"
CONTRACT_VERSION = 1
DEFAULT_POD_CIDR = "198.19.128.0/18"


class ConfigError(ValueError):
    """agent.json is missing or malformed."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str
    netns: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    lab_dir: Path
    kubeconfig: Path
    server: str
    ca_file: Path
    nodes: tuple[NodeConfig, ...]
    qemu_lab_id: str | None
    paper: bool
    lab_id: str
    pod_cidr: str = DEFAULT_POD_CIDR
    proxy: bool = True

    @property
    def log_file(self) -> Path:
        return self.lab_dir / "agent.log"

    @property
    def state_dir(self) -> Path:
        """Where the agent keeps its node credentials and its status file."""
        return self.lab_dir / "agent"


def _text(raw: dict[str, Any], key: str, where: Path) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    return value


def load(lab_dir: Path) -> AgentConfig:
    """Read ``DIR/agent.json``: the fields of the control-plane lab's ``AgentContract``
    (``lab/controlplane/agent_contract.py``, contract version 1), read here without importing
    the lab so the agent depends only on the file."""
    where = lab_dir / CONTRACT_FILE
    try:
        raw = json.loads(where.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found (the control-plane lab writes it)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    if raw.get("version", CONTRACT_VERSION) != CONTRACT_VERSION:
        raise ConfigError(f"{where}: contract version {raw.get('version')} (this agent speaks {CONTRACT_VERSION})")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError(f"{where}: 'nodes' must be a non-empty list")
    nodes = []
    for i, node in enumerate(nodes_raw):
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: nodes[{i}] must be an object")
        netns = node.get("netns")
        nodes.append(NodeConfig(_text(node, "name", where), _text(node, "address", where),
                                netns if isinstance(netns, str) and netns else None))
    qemu_lab = raw.get("qemu_lab_id")
    paper = raw.get("paper")
    if not isinstance(paper, bool):
        raise ConfigError(f"{where}: 'paper' must be true or false")
    if not paper and not (isinstance(qemu_lab, str) and qemu_lab):
        raise ConfigError(f"{where}: a lab that is not paper needs 'qemu_lab_id'")
    return AgentConfig(
        lab_dir=lab_dir,
        kubeconfig=Path(_text(raw, "kubeconfig", where)),
        server=_text(raw, "server", where),
        ca_file=Path(_text(raw, "ca_file", where)),
        nodes=tuple(nodes),
        qemu_lab_id=qemu_lab if isinstance(qemu_lab, str) and qemu_lab else None,
        paper=paper,
        lab_id=_text(raw, "lab_id", where),
        pod_cidr=str(raw.get("pod_cidr") or DEFAULT_POD_CIDR),
        proxy=bool(raw.get("proxy", True)),
    )
