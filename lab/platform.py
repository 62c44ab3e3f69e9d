"""The Platform seam: what every backend (qemu lab, KubeVirt) offers the suites and the runner.

Suites and the runner reach a lab only through this module (and ``virtproof.lab.guest``, which
logs into the guests a platform hands out). A backend declares its capabilities; a suite that
needs one the platform lacks is skipped with that reason (``require``). Optional features are
optional protocols below, each gated by a capability and obtained with ``feature()``, never by
probing a backend's attributes:

- ``MigratablePlatform`` (``live_migration``): ``migrate()``.
- ``Drainable`` (``node_drain``): ``evacuate()`` a node the platform's way.
- ``FaultInjection`` (``fault_injection``): the migration fault tests' hooks.
- ``HostProcesses`` (``host_metrics``): the host pid behind a VM, for host metrics.
- ``LatencyReporting`` (``platform_latencies``): per-VM phase latencies from the platform's records.
- ``ApiMetrics`` (``api_metrics``): the control plane's request counters (kube-apiserver /metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

from virtproof.core.capabilities import Capability
from virtproof.core.migration import MigrationMode, MigrationPolicy, policy_label

__all__ = ["Capability", "MigrationMode", "MigrationPolicy", "policy_label"]  # the vocabulary, re-exported for suites


class CapabilityMissing(Exception):
    """Raised by ``require`` when a platform lacks what a suite needs."""


class PlatformError(Exception):
    """An operation on the platform failed (a VM did not start, a node is gone)."""


class GuestUnreachable(PlatformError):
    """A guest did not become reachable in time."""


TimeSource = Literal["platform", "harness"]


@dataclass(frozen=True)
class Endpoint:
    """A TCP address where the harness reaches a guest service."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class VMSpec:
    """What a suite asks for. Backends map it onto qemu arguments or a VirtualMachine."""

    name: str
    image: str = "micro"
    cpus: int = 1
    memory_mib: int = 256
    node: str | None = None
    disk_bus: Literal["virtio", "scsi", "sata", "ide"] = "virtio"
    nic_model: Literal["virtio", "e1000", "vmxnet3"] = "virtio"
    scratch_disk_mib: int = 64
    labels: tuple[tuple[str, str], ...] = ()
    # "l2": the guest keeps one address on a segment shared by all nodes (what live migration
    # needs for a stable address); "user": the platform's default (qemu: user networking).
    network: Literal["user", "l2"] = "user"


# Whose clock stamped a time. "local": this host's (the harness's readings, qemu's QMP events);
# "cluster": the cluster's components (metav1.Time fields written by the apiserver, virt-controller
# and virt-handler on other machines, whole seconds). Times of different clocks never meet in
# one figure.
Clock = Literal["local", "cluster"]
START_EVENT: dict[str, str] = {"local": "created", "cluster": "cluster_created"}


@dataclass(frozen=True)
class TimelineEvent:
    """One point in a VM's life: a phase reached, with where the timestamp came from."""

    name: str
    timestamp: float
    source: TimeSource
    clock: Clock = "local"
    resolution_s: float = 0.0  # 1.0 for metav1.Time (truncated to the second)


@dataclass(frozen=True)
class Span:
    """The time between two events of one clock."""

    seconds: float
    source: TimeSource
    clock: Clock
    resolution_s: float


@dataclass
class Timeline:
    """Ordered events of one VM. ``created`` is the harness's create call (local clock);
    platforms that stamp their own creation time add ``cluster_created`` on their clock."""

    events: list[TimelineEvent] = field(default_factory=list)

    def add(self, name: str, timestamp: float, source: TimeSource, clock: Clock = "local",
            resolution_s: float = 0.0) -> TimelineEvent:
        event = TimelineEvent(name, timestamp, source, clock, resolution_s)
        self.events.append(event)
        return event

    def span(self, name: str) -> Span | None:
        """From the creation on ``name``'s own clock to ``name``; None without both."""
        event = self.get(name)
        start = self.get(START_EVENT[event.clock]) if event is not None else None
        if event is None or start is None:
            return None
        resolution = max(event.resolution_s, start.resolution_s)
        return Span(event.timestamp - start.timestamp, event.source, event.clock, resolution)

    def get(self, name: str) -> TimelineEvent | None:
        for event in self.events:
            if event.name == name:
                return event
        return None


@dataclass(frozen=True)
class GuestAccess:
    """How to log into guests of this platform: user, client key, pinned host key."""

    user: str
    private_key: Path
    host_key: str  # "ssh-ed25519 AAAA..." as pinned at image build time


@runtime_checkable
class VM(Protocol):
    """A running (or starting) guest."""

    @property
    def name(self) -> str: ...

    @property
    def node(self) -> str: ...

    @property
    def spec(self) -> VMSpec: ...

    @property
    def timeline(self) -> Timeline: ...

    def ssh_endpoint(self) -> Endpoint: ...

    def http_endpoint(self) -> Endpoint: ...

    def http_paths(self) -> Mapping[str, Endpoint]:
        """Every way to reach the guest's HTTP server, by name: ``service`` (through the platform's
        service layer: a NodePort and kube-proxy) and/or ``direct`` (the guest's own address).
        ``http_endpoint()`` is one of them; probing each shows what a service switch adds."""
        ...

    def console_tail(self, lines: int = 40) -> str: ...

    def alive(self) -> bool:
        """False once the platform knows the guest is gone (qemu exited, VMI failed)."""
        ...

    def diagnostics(self) -> str:
        """What the platform can say about the VM's trouble (qemu's stderr, the VMI's conditions)."""
        ...


@runtime_checkable
class Platform(Protocol):
    """What suites may use. Implemented by lab.qemu.platform and lab.kubevirt."""

    @property
    def name(self) -> str:
        """Short platform name used as the ``platform`` sample label (e.g. ``qemu``)."""
        ...

    @property
    def accel(self) -> str:
        """The accelerator guests run under (``kvm`` or ``tcg``), or what the platform says."""
        ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def nodes(self) -> Sequence[str]: ...

    def facts(self) -> Mapping[str, object]:
        """What the run manifest records about this lab: versions, network, why this accelerator."""
        ...

    def guest_access(self, image: str) -> GuestAccess: ...

    def create_vm(self, spec: VMSpec) -> VM:
        """Start a VM. Records ``created`` before the request; returns once it was accepted."""
        ...

    def wait_running(self, vm: VM, timeout: float) -> TimelineEvent:
        """Block until the platform says the VM runs; record and return that event."""
        ...

    def delete_vm(self, vm: VM) -> None:
        """Stop and remove the VM and everything created for it. Idempotent."""
        ...

    def close(self) -> None:
        """Release connections held by this handle (does not tear the lab down)."""
        ...


def require(platform: Platform, *needed: Capability) -> None:
    """Raise CapabilityMissing naming what ``platform`` lacks of ``needed``."""
    missing = [c.value for c in needed if c not in platform.capabilities]
    if missing:
        raise CapabilityMissing(f"platform {platform.name} lacks: {', '.join(missing)}")


@dataclass(frozen=True)
class MigrationResult:
    """What one migration did, as the platform reports it."""

    vm: str
    source: str
    target: str
    ok: bool
    mode: str
    started: float
    finished: float
    total_s: float
    setup_s: float | None = None
    downtime_ms: float | None = None
    transferred_mib: float | None = None
    error: str | None = None
    time_source: TimeSource = "platform"
    resolution_s: float = 0.0  # of started/finished: 1.0 when they are metav1.Time
    # When the harness saw the move start and end, on this host's clock: the window its probers
    # and load generators are read in (``started``/``finished`` may be another machine's clock).
    observed_started: float | None = None
    observed_finished: float | None = None

    @property
    def observed_window(self) -> tuple[float, float]:
        start = self.observed_started if self.observed_started is not None else self.started
        end = self.observed_finished if self.observed_finished is not None else self.finished
        return start, end + self.resolution_s


@runtime_checkable
class MigratablePlatform(Platform, Protocol):
    """A platform that can live-migrate VMs between its nodes."""

    def migrate(self, vm: VM, target_node: str, policy: MigrationPolicy) -> MigrationResult:
        """Move ``vm`` to ``target_node``; returns when done, failed, or cancelled on timeout."""
        ...


@runtime_checkable
class Drainable(Protocol):
    """``node_drain``: empty a node the platform's way (qemu: migrate all; KubeVirt: cordon + evict)."""

    def evacuate(self, node: str, timeout: float = 300.0) -> list[MigrationResult]: ...


@runtime_checkable
class MigrationProgress(Protocol):
    """A live view of one migration in flight."""

    @property
    def status(self) -> str: ...

    @property
    def transferred_bytes(self) -> int: ...


@runtime_checkable
class FaultInjection(Protocol):
    """``fault_injection``: what the migration fault tests do to a move in flight."""

    def migration_progress(self, vm: VM) -> MigrationProgress | None: ...

    def kill_destination(self, vm: VM) -> None:
        """Kill the process receiving ``vm``'s migration; returns once it is gone."""
        ...

    def kill_source(self, vm: VM) -> None:
        """Kill the process running ``vm`` during its migration; returns once it is gone."""
        ...

    def set_node_link(self, node: str, up: bool) -> None: ...

    def migration_leftovers(self, vm: VM) -> list[str]:
        """Processes started to move ``vm`` that still run (none may remain after a move ended)."""
        ...


@runtime_checkable
class HostProcesses(Protocol):
    """``host_metrics``: each VM is a process on this host whose CPU and memory can be read."""

    def host_pid(self, vm: VM) -> int | None: ...


@dataclass(frozen=True)
class ApiRequests:
    """How many requests the control plane served for one verb and resource (all codes summed)."""

    verb: str
    resource: str  # "pods", "virtualmachineinstances", "pods/eviction"...
    group: str
    count: float


@runtime_checkable
class ApiMetrics(Protocol):
    """``api_metrics``: the control plane's request counters, read from its own metrics endpoint."""

    def api_requests(self) -> Sequence[ApiRequests]: ...


@runtime_checkable
class LatencyReporting(Protocol):
    """``platform_latencies``: per-VM phase latencies (ms) from the platform's own records."""

    def vm_latencies(self) -> Mapping[str, Mapping[str, float]]: ...


Feature = TypeVar("Feature")


def feature(platform: Platform, protocol: type[Feature], capability: Capability) -> Feature:
    """``platform`` as the optional ``protocol`` it offers under ``capability``; else CapabilityMissing."""
    require(platform, capability)
    if not isinstance(platform, protocol):
        raise CapabilityMissing(f"platform {platform.name} claims {capability.value} but does not implement it")
    return platform
