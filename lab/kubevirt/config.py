"""What the KubeVirt backend needs to know, independent of how the scenario spells it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from virtproof.lab.kubevirt.connect import ConnectOptions
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.platform import GuestAccess


@dataclass(frozen=True)
class ImageConfig:
    """A VMSpec image name on this cluster: its disk, its login user, and whether cloud-init runs.

    ``access`` pins the login for images that do not run cloud-init (e.g. the micro guest,
    whose host key is fixed at build time); cloud-init images get a generated per-run key.
    """

    source: DiskSource
    user: str = "root"
    cloud_init: bool = True
    access: GuestAccess | None = None


@dataclass(frozen=True)
class KubeVirtConfig:
    run_id: str
    state_dir: Path  # the run's private directory: SSH keys live here
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    namespace: str | None = None  # default virtproof-<run-id>
    images: Mapping[str, ImageConfig] = field(default_factory=dict)
    node_address: str | None = None
    # The guests' own addresses (VMI status.interfaces ipAddress) are routable from the harness
    # (it runs in the pod network, a bridge/Multus network, or the simulated-node lab's L2
    # segment): probe them too. ``lab.guest_network_reachable`` of kind/kubeadm/existing
    # scenarios; the sim-kubevirt lab declares it itself (lab/controlplane/lab.py).
    guest_network_reachable: bool = False
    require_cdi: bool = False
    delete_timeout_s: float = 60.0

    @property
    def effective_namespace(self) -> str:
        return self.namespace or f"virtproof-{self.run_id}".lower()[:63]
