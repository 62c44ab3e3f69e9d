"""Scenario models for the KubeVirt labs: ``kind``, ``kubeadm`` and ``existing``.

All three share how the harness talks to the cluster (``KubeAccess``): kubeconfig and context
(else ``KUBECONFIG``, else in-cluster config), the namespace (default ``virtproof-<run-id>``),
client-side rate limits, and the images VMs boot from.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from virtproof.scenarios.base import Strict

# Pinned versions the kind and kubeadm labs install (operator + CR manifests from the releases).
KUBEVIRT_VERSION = "v1.9.0"
CDI_VERSION = "v1.66.0"
KUBERNETES_VERSION = "1.34"
KIND_NODE_IMAGE = "kindest/node:v1.34.0"
# The sim-kubevirt lab builds its control plane from the Go module proxy at exactly these versions
# (KubeVirt at KUBEVIRT_VERSION); virtproof.lab.controlplane.build holds their go.mod and go.sum.
CONTROL_PLANE_KUBERNETES = "v1.34.4"
CONTROL_PLANE_ETCD = "v3.6.16"

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Values that end up in shell commands (kind, kubeadm over SSH) are typed: these patterns admit no
# shell metacharacter, and the commands quote them as well.
_HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^[0-9a-fA-F:.]+$"  # a DNS name or an IP address
_USER = r"^[a-z_][a-z0-9_-]{0,31}$"
_IMAGE = r"^[a-z0-9][a-z0-9./_:@-]{0,254}$"  # an OCI image reference
_VERSION = r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$"


class ImageSource(Strict):
    """Where a VM image comes from on the cluster, and how to log into it.

    Exactly one of ``container_disk`` (a containerDisk image) or ``http`` (a URL CDI imports
    into a DataVolume) is set. ``cloud_init: true`` means the image runs cloud-init: the run's
    SSH key and a pinned host key are injected, and the HTTP responder is started from it.
    """

    container_disk: str | None = Field(None, pattern=_IMAGE)
    http: str | None = Field(None, pattern=r"^https?://[^\s'\"`$;|&<>()\\]+$")
    user: str = Field("root", pattern=_USER)
    cloud_init: bool = True
    disk_size: str | None = Field(
        None, pattern=r"^\d+(Mi|Gi|Ti)$",
        description="an http image's DataVolume size; default: its virtual size (read from the image's header "
        "at the URL) plus CDI's filesystem overhead; needed for gz/xz/zst-compressed images",
    )
    storage_class: str | None = Field(None, pattern=_NAME, max_length=253)
    private_key: str | None = Field(None, description="for images without cloud-init: the login key")
    host_key: str | None = Field(None, description="for images without cloud-init: 'ssh-ed25519 AAAA...'")

    @model_validator(mode="after")
    def _one_source(self) -> ImageSource:
        if (self.container_disk is None) == (self.http is None):
            raise ValueError("needs exactly one of container_disk or http")
        if not self.cloud_init and (self.private_key is None or self.host_key is None):
            raise ValueError("an image without cloud-init needs private_key and host_key")
        return self


class KubeAccess(Strict):
    kubeconfig: str | None = Field(None, description="path; default $KUBECONFIG, then in-cluster")
    context: str | None = None
    namespace: str | None = Field(None, pattern=_NAME, max_length=63)
    qps: float = Field(20.0, gt=0, le=10_000)
    burst: int = Field(20, ge=1, le=10_000)
    node_address: str | None = Field(
        None, pattern=_HOST, description="address to reach NodePorts on; default: each node's InternalIP"
    )
    require_cdi: bool = False
    guest_network_reachable: bool = Field(
        False, description="the guests' own addresses (VMI status.interfaces) are routable from the harness "
        "(it runs in the pod network, or guests sit on a bridge/Multus network it reaches): the prober "
        "also measures each guest directly, and the Service's lag behind it",
    )
    images: dict[str, ImageSource] = Field(
        default_factory=lambda: {
            "micro": ImageSource(container_disk="quay.io/containerdisks/fedora:41", user="fedora")
        }
    )


def _on_off(value: object) -> object:
    """YAML 1.1 reads ``on``/``off`` as booleans: take them as the words the user wrote."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class KindLab(KubeAccess):
    """A kind cluster made for the run (needs Docker or podman and the ``kind`` binary)."""

    kind: Literal["kind"]
    cluster_name: str = Field("virtproof", pattern=_NAME, max_length=40)
    # Worker nodes besides the (tainted) control plane: live migration needs two schedulable ones.
    workers: int = Field(2, ge=1, le=8, description="worker nodes; the control plane is one more")
    node_image: str = Field(KIND_NODE_IMAGE, pattern=_IMAGE)
    kubevirt_version: str = Field(KUBEVIRT_VERSION, pattern=_VERSION)
    cdi_version: str = Field(CDI_VERSION, pattern=_VERSION)
    emulation: Literal["auto", "on", "off"] = Field(
        "auto", description="developerConfiguration.useEmulation; auto: on unless KVM boots"
    )
    keep: bool = False

    _emulation = field_validator("emulation", mode="before")(classmethod(lambda cls, v: _on_off(v)))

    @property
    def schedulable_nodes(self) -> tuple[int, str]:
        """How many nodes VMs can run on, and why: kind taints its control plane when it has workers."""
        return self.workers, f"lab.workers: {self.workers}; the control plane is tainted"


class KubeadmHost(Strict):
    address: str = Field(pattern=_HOST)
    user: str = Field("root", pattern=_USER)
    key: str = Field(min_length=1, description="path to the SSH private key")
    port: int = Field(22, ge=1, le=65535)
    role: Literal["control-plane", "worker"] = "worker"
    host_key: str | None = Field(None, description="pinned 'ssh-ed25519 AAAA...'; else trust on first use")


class KubeadmLab(KubeAccess):
    """A cluster made with kubeadm on hosts reached over SSH."""

    kind: Literal["kubeadm"]
    hosts: list[KubeadmHost] = Field(min_length=1)
    kubernetes_version: str = Field(KUBERNETES_VERSION, pattern=r"^\d+\.\d+$")
    pod_cidr: str = "10.244.0.0/16"

    @field_validator("pod_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError:
            raise ValueError(f"{value!r} is not a network such as 10.244.0.0/16") from None
    cni: Literal["flannel"] = "flannel"
    kubevirt_version: str = Field(KUBEVIRT_VERSION, pattern=_VERSION)
    cdi_version: str = Field(CDI_VERSION, pattern=_VERSION)
    emulation: Literal["auto", "on", "off"] = "auto"
    keep: bool = True

    _emulation = field_validator("emulation", mode="before")(classmethod(lambda cls, v: _on_off(v)))

    @model_validator(mode="after")
    def _one_control_plane(self) -> KubeadmLab:
        planes = [h for h in self.hosts if h.role == "control-plane"]
        if len(planes) != 1:
            raise ValueError(f"needs exactly one host with role control-plane (has {len(planes)})")
        return self

    @property
    def schedulable_nodes(self) -> tuple[int, str]:
        """How many nodes VMs can run on, and why: kubeadm taints the control plane; the lab
        untaints it only when there is no worker (``virtproof.lab.clusters.kubeadm``)."""
        workers = sum(1 for h in self.hosts if h.role == "worker")
        if workers:
            return workers, f"{workers} worker host(s) in lab.hosts; the control plane is tainted"
        return 1, "lab.hosts has only the control plane"


class ExistingLab(KubeAccess):
    """Attach to a running cluster with KubeVirt; install nothing."""

    kind: Literal["existing"]


class SimKubeVirtLab(Strict):
    """A real control plane on this host, nodes simulated (``virtproof.lab.controlplane``).

    etcd, kube-apiserver (RBAC and admission on), kube-controller-manager, kube-scheduler and
    KubeVirt's virt-api and virt-controller run as host processes on loopback, built from the Go
    module proxy at the pinned versions; KubeVirt's CRDs and RBAC come from its own code. The
    kubelet's and virt-handler's part is played by virtproof's node agent: every VMI is a real
    qemu guest on one of up to 16 network-namespace nodes, or with ``paper: true`` (up to 1,000
    nodes) reported Running without a guest, to measure the control plane alone.
    """

    kind: Literal["sim-kubevirt"]
    nodes: int = Field(2, ge=1, le=1000, description="Node objects; at most 16 unless paper")
    paper: bool = Field(False, description="VMIs run no guest: control-plane scale runs")
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    network: Literal["netns", "loopback"] = "netns"
    kubernetes_version: str = Field(CONTROL_PLANE_KUBERNETES, pattern=_VERSION)
    kubevirt_version: str = Field(KUBEVIRT_VERSION, pattern=_VERSION)
    etcd_version: str = Field(CONTROL_PLANE_ETCD, pattern=_VERSION)
    apiserver_port: int | None = Field(None, ge=1024, le=65535, description="default: a free port")
    namespace: str | None = Field(None, pattern=_NAME, max_length=63)
    qps: float = Field(50.0, gt=0, le=10_000)
    burst: int = Field(100, ge=1, le=10_000)

    @field_validator("kubernetes_version", "kubevirt_version", "etcd_version")
    @classmethod
    def _pinned(cls, value: str, info: ValidationInfo) -> str:
        component, pinned = {"kubernetes_version": ("Kubernetes", CONTROL_PLANE_KUBERNETES),
                             "kubevirt_version": ("KubeVirt", KUBEVIRT_VERSION),
                             "etcd_version": ("etcd", CONTROL_PLANE_ETCD)}[str(info.field_name)]
        if value != pinned:
            raise ValueError(f"{value} is not a {component} version virtproof builds (it builds {pinned})")
        return value

    @model_validator(mode="after")
    def _real_nodes(self) -> SimKubeVirtLab:
        if not self.paper and self.nodes > 16:
            raise ValueError(f"nodes: {self.nodes} nodes with qemu guests is more than 16; "
                             "set paper: true for up to 1000 nodes without guests")
        return self
