"""The interface between the sim-kubevirt lab and its node agent (``virtproof.lab.simnodes``).

The lab brings up the control plane and creates the Node objects, then writes ``DIR/agent.json``
(this dataclass) and starts ``python -m virtproof.lab.simnodes --lab-dir DIR/`` in its own session
(the trailing slash puts the lab directory, the lab's marker, into its command line), its
stdout and stderr appended to ``DIR/agent.log`` (where the agent logs), its pid in
``DIR/agent.pid``. DIR is the lab directory (``<state root>/controlplane/<lab-id>``); the agent
may keep its own files under ``DIR/agent/``.
The lab counts the agent ready when every node has a Lease in ``kube-node-lease``. At ``down``
the lab sends SIGTERM (then SIGKILL after 30 s) and removes DIR.

The agent plays the kubelet and virt-handler of every node listed: Leases in
``kube-node-lease`` and the Ready condition (heartbeats), pod status for pods bound to its nodes,
VMI status and migrations. With ``paper`` its VMIs run no guest; otherwise each runs as a qemu
guest on the node's network namespace of the qemu lab ``qemu_lab_id``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONTRACT_FILE = "agent.json"
PID_FILE = "agent.pid"
LOG_FILE = "agent.log"
AGENT_MODULE = "virtproof.lab.simnodes"
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class AgentNode:
    name: str  # the Node object's name ("node0")
    address: str  # its InternalIP: where NodePorts and migration streams are reached
    netns: str | None  # the qemu lab's network namespace of this node; None for paper nodes


@dataclass(frozen=True)
class AgentContract:
    lab_id: str
    kubeconfig: str  # the admin kubeconfig (system:masters)
    server: str  # https://127.0.0.1:<port>
    ca_file: str  # the cluster CA (PEM) that signed the apiserver's certificate
    nodes: tuple[AgentNode, ...]
    qemu_lab_id: str | None  # the qemu lab holding the nodes' namespaces; None with paper
    paper: bool
    version: int = CONTRACT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AgentContract:
        data: dict[str, Any] = json.loads(text)
        if data.get("version", CONTRACT_VERSION) != CONTRACT_VERSION:
            raise ValueError(f"agent contract version {data.get('version')} (this virtproof speaks {CONTRACT_VERSION})")
        nodes = tuple(AgentNode(str(n["name"]), str(n["address"]), n.get("netns")) for n in data["nodes"])
        return cls(
            lab_id=str(data["lab_id"]), kubeconfig=str(data["kubeconfig"]), server=str(data["server"]),
            ca_file=str(data["ca_file"]), nodes=nodes, qemu_lab_id=data.get("qemu_lab_id"),
            paper=bool(data["paper"]), version=int(data.get("version", CONTRACT_VERSION)),
        )

    def write(self, lab_dir: Path) -> Path:
        path = lab_dir / CONTRACT_FILE
        tmp = lab_dir / f".{CONTRACT_FILE}.tmp"
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, lab_dir: Path) -> AgentContract:
        return cls.from_json((lab_dir / CONTRACT_FILE).read_text())
