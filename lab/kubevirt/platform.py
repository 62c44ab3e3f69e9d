"""``KubeVirtPlatform``: the Platform seam over the official kubernetes client.

Guests are reached through a NodePort Service per VM (SSH 22 and HTTP 80) at the VMI's node
address (its InternalIP, or ``node_address`` from the scenario). Timelines come from watch
events (see ``timeline.Recorder``), never from polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from virtproof.instruments import promtext
from virtproof.instruments.latency import Quantiles, summarize_all
from virtproof.lab.images.cloudinit import workload_files
from virtproof.lab.kubevirt import manifests, migration
from virtproof.lab.kubevirt.config import ImageConfig, KubeVirtConfig
from virtproof.lab.kubevirt.connect import Connection, connect, get_json
from virtproof.lab.kubevirt.importer import template_source
from virtproof.lab.kubevirt.informer import Informer
from virtproof.lab.kubevirt.keys import RunKeys, run_keys
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.preflight import (
    NAMESPACE_PERMS,
    OPTIONAL,
    REQUIRED,
    ClusterFacts,
    check_permissions,
    inspect_cluster,
    may_get_url,
    require_permissions,
)
from virtproof.lab.kubevirt.resources import RUN_LABEL, VM, VMI, VMIM, Kube, Obj, Resource
from virtproof.lab.kubevirt.schema import ObjectSchemas, cluster_schemas
from virtproof.lab.kubevirt.timeline import Recorder, VMRecord
from virtproof.lab.platform import (
    ApiRequests,
    Capability,
    Endpoint,
    GuestAccess,
    MigrationPolicy,
    MigrationResult,
    PlatformError,
    Timeline,
    TimelineEvent,
    VMSpec,
)

log = logging.getLogger("virtproof.lab.kubevirt")
SCHEDULABLE_LABEL = "kubevirt.io/schedulable"


@dataclass
class KubeVirtVM:
    """A VirtualMachine created by this run."""

    spec: VMSpec
    timeline: Timeline
    record: VMRecord
    platform: KubeVirtPlatform
    ssh_node_port: int
    http_node_port: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def node(self) -> str:
        return self.record.node

    def _endpoint(self, port: int) -> Endpoint:
        # One node's address for the whole run: a NodePort answers on every node, so the address
        # stays put when the VM moves (the VMI's own node changes with every migration).
        return Endpoint(self.platform.service_address(), port)

    def ssh_endpoint(self) -> Endpoint:
        return self._endpoint(self.ssh_node_port)

    def http_endpoint(self) -> Endpoint:
        return self._endpoint(self.http_node_port)

    def http_paths(self) -> Mapping[str, Endpoint]:
        paths = {"service": self.http_endpoint()}
        if self.platform.config.guest_network_reachable and self.record.ip_address:
            paths["direct"] = Endpoint(self.record.ip_address, manifests.HTTP_PORT)
        return paths

    def console_tail(self, lines: int = 40) -> str:
        # The serial console is a websocket subresource; virtproof does not attach to it.
        # What the cluster says about the VMI is the most useful text here.
        rec = self.record
        return (f"VMI {self.name}: phase={rec.phase or '-'} node={rec.node or '-'} "
                f"printableStatus={rec.printable_status or '-'} {rec.failure}").strip()

    def alive(self) -> bool:
        return self.record.phase not in ("Failed", "Succeeded")

    def diagnostics(self) -> str:
        return self.console_tail()


class KubeVirtPlatform:
    """Implements ``virtproof.lab.platform.Platform`` and ``MigratablePlatform`` for a KubeVirt cluster."""

    def __init__(self, config: KubeVirtConfig, conn: Connection, kube: Kube, facts: ClusterFacts,
                 capabilities: frozenset[Capability], created_namespace: bool) -> None:
        self.config = config
        self.conn = conn
        self.kube = kube
        self.cluster_facts = facts
        self.namespace = config.effective_namespace
        self._capabilities = capabilities
        self.created_namespace = created_namespace
        self.recorder = Recorder()
        self.selector = f"{RUN_LABEL}={config.run_id}"
        self._informers: list[Informer] = []
        self._keys: RunKeys | None = None
        self._node_ips: dict[str, str] = {}
        self._lock = threading.Lock()
        self._migrations = 0
        self.cordoned: set[str] = set()
        self.vms: dict[str, KubeVirtVM] = {}
        self._dry_runs: set[tuple[str, str]] = set()
        self._service_address: str | None = None
        self._schemas: ObjectSchemas | None = None

    # construction -----------------------------------------------------------------------
    @classmethod
    def open(cls, config: KubeVirtConfig) -> KubeVirtPlatform:
        """Connect, run the preflight checks, make the namespace, start the informers."""
        conn = connect(config.connect)
        kube = Kube(conn)
        try:
            namespace = config.effective_namespace
            needed = list(REQUIRED) + ([] if config.namespace else list(NAMESPACE_PERMS))
            if config.require_cdi:
                needed += list(OPTIONAL[Capability.DISK_IMPORT])
            require_permissions(kube, namespace, needed)
            facts = inspect_cluster(kube, config.require_cdi)
            caps = cls._capabilities_for(kube, namespace, facts)
            created = ensure_namespace(kube, namespace, config.run_id, config.namespace is not None)
            platform = cls(config, conn, kube, facts, caps, created)
            platform._start_informers()
            return platform
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _capabilities_for(kube: Kube, namespace: str, facts: ClusterFacts) -> frozenset[Capability]:
        caps = {Capability.BOOT, Capability.HA_RESTART, Capability.PLATFORM_LATENCIES}
        kube.conn.limiter.acquire()
        nodes = schedulable_nodes(kube.core.list_node().items, {})
        if len(nodes) >= 2:
            caps.add(Capability.LIVE_MIGRATION)
            policies_ok = not check_permissions(kube, namespace, OPTIONAL[Capability.POST_COPY])
            if policies_ok or facts.migrations.get("allowPostCopy") or facts.policies_allow_postcopy:
                caps.add(Capability.POST_COPY)
            if policies_ok or facts.migrations.get("allowAutoConverge") or facts.policies_allow_auto_converge:
                caps.add(Capability.AUTO_CONVERGE)
            if policies_ok:
                caps.add(Capability.MIGRATION_BANDWIDTH_LIMIT)
                if facts.features.max_downtime:  # v1.9+ with the MigrationStallDetection gate
                    caps.add(Capability.MIGRATION_DOWNTIME_LIMIT)
            if not check_permissions(kube, namespace, OPTIONAL[Capability.NODE_DRAIN]):
                caps.add(Capability.NODE_DRAIN)
        if facts.cdi_version and not check_permissions(kube, namespace, OPTIONAL[Capability.DISK_IMPORT]):
            caps.add(Capability.DISK_IMPORT)
        if may_get_url(kube, "/metrics"):
            caps.add(Capability.API_METRICS)
        return frozenset(caps)

    def _start_informers(self) -> None:
        for res, handler in ((VMI, self.recorder.on_vmi), (VM, self.recorder.on_vm),
                             (VMIM, self.recorder.on_migration)):
            informer = Informer(self.kube, res, self.namespace, self.selector, handler)
            informer.start()
            self._informers.append(informer)
        for informer in self._informers:
            informer.synced.wait(30)
            if informer.error is not None:
                raise PlatformError(f"cannot watch {informer.res.plural}: {self.redact(str(informer.error))}")

    # Platform protocol ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "kubevirt"

    @property
    def accel(self) -> str:
        return "tcg" if self.cluster_facts.use_emulation else "kvm"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._capabilities

    def versions(self) -> dict[str, str]:
        """Kubernetes, KubeVirt and (when present) CDI versions."""
        return self.cluster_facts.manifest()

    def facts(self) -> Mapping[str, object]:
        """For the run manifest: the cluster's versions."""
        return {"versions": self.versions()}

    def redact(self, text: str) -> str:
        return self.conn.redactor.redact(text)

    def nodes(self) -> Sequence[str]:
        """Nodes VMs can run on: schedulable, untainted (NoSchedule/NoExecute) and, when the
        cluster labels any node ``kubevirt.io/schedulable``, labelled ``true`` (virt-handler runs)."""
        self.kube.conn.limiter.acquire()
        return schedulable_nodes(self.kube.core.list_node().items, self._node_ips)

    def service_address(self) -> str:
        """Where the harness reaches NodePorts: ``lab.node_address``, else the InternalIP of the
        first schedulable node (by name), chosen once per run so that it never moves."""
        with self._lock:
            if self._service_address is None:
                if self.config.node_address:
                    self._service_address = self.config.node_address
                else:
                    nodes = self.nodes()
                    if not nodes:
                        raise PlatformError("no schedulable node to reach NodePort Services on; set lab.node_address")
                    self._service_address = self.node_address(nodes[0])
            return self._service_address

    def node_address(self, node: str) -> str:
        if self.config.node_address:
            return self.config.node_address
        if node not in self._node_ips:
            self.kube.conn.limiter.acquire()
            obj = self.kube.core.read_node(node)
            for addr in (obj.status.addresses or []) if obj.status else []:
                if addr.type == "InternalIP":
                    self._node_ips[node] = str(addr.address)
        if node not in self._node_ips:
            raise PlatformError(f"node {node!r} has no InternalIP; set lab.node_address")
        return self._node_ips[node]

    def _image(self, image: str) -> ImageConfig:
        try:
            return self.config.images[image]
        except KeyError:
            known = ", ".join(sorted(self.config.images)) or "none"
            raise PlatformError(f"image {image!r} is not configured for this cluster (known: {known})") from None

    def register_image(self, name: str, image: ImageConfig) -> None:
        """Make ``name`` usable as ``VMSpec.image`` (e.g. a DataVolume a V2V import made)."""
        self.config = replace(self.config, images={**self.config.images, name: image})

    def import_disk(self, disk: Path, name: str, *, advertise: str, user: str = "root",
                    access: GuestAccess | None = None, size: str | None = None, timeout: float = 900.0) -> str:
        """V2V: serve ``disk`` over HTTP (at ``advertise``, an address the cluster reaches), import
        it into a DataVolume through CDI, and register it as an image; returns the image name."""
        from virtproof.lab.kubevirt.importer import import_disk

        import_disk(self, disk, name, advertise=advertise, size=size, timeout=timeout)
        self.register_image(name, ImageConfig(DiskSource(data_volume=name), user=user,
                                              cloud_init=access is None, access=access))
        return name

    def keys(self) -> RunKeys:
        with self._lock:
            if self._keys is None:
                self._keys = run_keys(self.config.state_dir)
                self.conn.redactor.add([self._keys.host_private_pem])
            return self._keys

    def guest_access(self, image: str) -> GuestAccess:
        cfg = self._image(image)
        if cfg.access is not None:
            return cfg.access
        if not cfg.cloud_init:
            raise PlatformError(f"image {image!r} has no cloud-init and no pinned access configured")
        keys = self.keys()
        return GuestAccess(cfg.user, keys.client_private, keys.host_public)

    def _cloud_init(self, spec: VMSpec) -> manifests.CloudInit | None:
        cfg = self._image(spec.image)
        if not cfg.cloud_init:
            return None
        keys = self.keys()
        return manifests.CloudInit(cfg.user, keys.client_public, keys.host_private_pem, keys.host_public,
                                   files=workload_files())

    def manifest_for(self, spec: VMSpec) -> Obj:
        """The VirtualMachine object ``create_vm`` would send for ``spec``."""
        cfg = self._image(spec.image)
        source = template_source(self, spec.image, cfg.source)  # an http image: sized, StorageProfile's modes
        return manifests.virtual_machine(spec, self.namespace, self.config.run_id, source, self._cloud_init(spec))

    def schemas(self) -> ObjectSchemas:
        """The cluster's own OpenAPI v3 documents of the groups virtproof sends, else the bundled
        schema of its release (``schema.cluster_schemas``); read once."""
        with self._lock:
            if self._schemas is None:
                facts = self.cluster_facts
                self._schemas = cluster_schemas(lambda path: get_json(self.conn, path), facts.kubevirt_version,
                                                facts.cdi_version)
            return self._schemas

    def _dry_run_once(self, res: Resource, body: Obj, namespace: str | None, what: str) -> None:
        """The cluster's own truth before anything is created: the first object of each kind (and
        shape) goes through server-side dry-run, so its schema and KubeVirt's webhooks judge it."""
        key = (res.plural, what)
        if key in self._dry_runs:
            return
        schemas = self.schemas()
        if schemas.covers(body):
            problems = schemas.validate(body)
            if problems:
                where = schemas.origin(str(body.get("apiVersion")))
                raise PlatformError(f"{what} does not validate against {where}: {'; '.join(problems[:5])}")
        try:
            self.kube.create(res, body, namespace, dry_run=True)
        except ApiException as exc:
            raise PlatformError(f"the cluster refuses {what}: {self._api_error(exc)}") from None
        self._dry_runs.add(key)

    def create_vm(self, spec: VMSpec) -> KubeVirtVM:
        body = self.manifest_for(spec)
        shape = f"a VirtualMachine like {spec.name} ({spec.image}, {spec.disk_bus})"
        self._dry_run_once(VM, body, self.namespace, shape)
        timeline = Timeline()
        record = self.recorder.track(spec.name, timeline)
        timeline.add("created", time.time(), "harness")
        service = manifests.guest_service(spec.name, self.namespace, self.config.run_id)
        cloud = self._cloud_init(spec)
        try:
            if cloud is not None:
                self.kube.conn.limiter.acquire()
                secret = manifests.cloud_init_secret(spec.name, self.namespace, self.config.run_id, cloud)
                self.kube.core.create_namespaced_secret(self.namespace, cast(Any, secret))
            self.kube.conn.limiter.acquire()
            svc = self.kube.core.create_namespaced_service(self.namespace, cast(Any, service))
            self.kube.create(VM, body, self.namespace)
        except ApiException as exc:
            self.recorder.forget(spec.name)
            self._delete_companions(spec.name)  # do not leave the Service or Secret of a refused VM
            raise PlatformError(f"creating VM {spec.name}: {self._api_error(exc)}") from None
        ports = {p.name: int(p.node_port or 0) for p in ((svc.spec.ports or []) if svc.spec else [])}
        vm = KubeVirtVM(spec, timeline, record, self, ports.get("ssh", 0), ports.get("http", 0))
        self.vms[spec.name] = vm
        return vm

    def _delete_companions(self, vm_name: str) -> None:
        """The VM's Service and cloud-init Secret; already gone is fine."""
        for delete, name in ((self.kube.core.delete_namespaced_service, f"{vm_name}-guest"),
                             (self.kube.core.delete_namespaced_secret, manifests.cloud_init_secret_name(vm_name))):
            try:
                self.kube.conn.limiter.acquire()
                delete(name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise PlatformError(f"deleting {name}: {self._api_error(exc)}") from None

    def _api_error(self, exc: ApiException) -> str:
        body = str(exc.body or exc.reason or "")
        return self.redact(f"HTTP {exc.status}: {body[:800]}")

    def _kvm(self, vm: Any) -> KubeVirtVM:
        if not isinstance(vm, KubeVirtVM) or vm.platform is not self:
            raise PlatformError(f"{getattr(vm, 'name', vm)!r} is not a VM of this KubeVirt platform")
        return vm

    def wait_running(self, vm: Any, timeout: float) -> TimelineEvent:
        kvm = self._kvm(vm)
        rec = kvm.record

        def done() -> bool:
            return rec.timeline.get("running") is not None or bool(rec.failure)

        if not self.recorder.wait_for(done, timeout):
            raise PlatformError(f"VM {kvm.name} not Running after {timeout:.0f} s (VMI phase {rec.phase or 'none'})")
        event = rec.timeline.get("running")
        if event is None:
            raise PlatformError(f"VM {kvm.name} failed: {rec.failure}")
        return event

    def delete_vm(self, vm: Any) -> None:
        kvm = self._kvm(vm)
        rec = kvm.record
        try:
            self.kube.delete(VM, kvm.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise PlatformError(f"deleting VM {kvm.name}: {self._api_error(exc)}") from None
        self._delete_companions(kvm.name)
        if rec.vmi_uid:
            gone = self.recorder.wait_for(lambda: rec.vmi_deleted, self.config.delete_timeout_s)
            if not gone:
                log.warning("VMI %s still present %.0f s after deleting its VM", kvm.name,
                            self.config.delete_timeout_s)
        self.vms.pop(kvm.name, None)

    def close(self) -> None:
        for informer in self._informers:
            informer.stop()
        self._informers.clear()
        self.conn.close()

    # latencies --------------------------------------------------------------------------
    def latency_quantiles(self) -> list[Quantiles]:
        """kube-burner vmiLatency quantiles (ms) over every VM this platform tracked."""
        return summarize_all(self.vm_latencies().values())

    def vm_latencies(self) -> dict[str, dict[str, float]]:
        """``LatencyReporting``: each VM's kube-burner vmiLatency phases (ms), from the cluster's records."""
        with self.recorder.cond:
            return {name: dict(r.latencies_ms()) for name, r in self.recorder.vms.items()}

    def api_requests(self) -> list[ApiRequests]:
        """``ApiMetrics``: kube-apiserver's ``apiserver_request_total``, summed over codes and
        scopes, by verb, group and resource (with subresource), as KubeVirt's perfscale audit reads it."""
        self.kube.conn.limiter.acquire()
        request = self.conn.api.param_serialize(method="GET", resource_path="/metrics", auth_settings=["BearerToken"])
        try:
            response = self.conn.api.call_api(*request)
            body = response.read()  # type: ignore[no-untyped-call]  # the client is untyped here
        except ApiException as exc:
            raise PlatformError(f"reading the API server's metrics: {self._api_error(exc)}") from None
        if response.status != 200:
            raise PlatformError(f"reading the API server's metrics: HTTP {response.status}")
        text = bytes(body or b"").decode("utf-8", "replace")
        totals: dict[tuple[str, str, str], float] = {}
        for sample in promtext.samples(text, "apiserver_request_total"):
            labels = sample.labels
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource = f"{resource}/{labels['subresource']}"
            key = (labels.get("verb", ""), labels.get("group", ""), resource)
            totals[key] = totals.get(key, 0.0) + sample.value
        return [ApiRequests(verb, resource, group, count) for (verb, group, resource), count in sorted(totals.items())]

    # migration --------------------------------------------------------------------------
    def next_migration_name(self, vm: str) -> str:
        with self._lock:
            self._migrations += 1
            return f"{vm}-mig-{self._migrations}"

    def migrate(self, vm: Any, target_node: str, policy: MigrationPolicy) -> MigrationResult:
        return migration.migrate(self, self._kvm(vm), target_node, policy)

    def evacuate(self, node: str, timeout: float = 300.0, uncordon_after: bool = True) -> list[MigrationResult]:
        """Drain ``node`` like ``kubectl drain``: cordon, evict virt-launcher pods (KubeVirt turns
        each eviction into a live migration), wait until every VMI left the node. An eviction
        that starts no migration (the VMI is not live-migratable, a PodDisruptionBudget forbids
        it, or nothing intercepted it and the pod was deleted) is a failed result at once."""
        return migration.evacuate(self, node, timeout, uncordon_after)

    def cancel_migration(self, name: str) -> None:
        migration.cancel(self, name)


def schedulable_nodes(items: Sequence[Any], addresses: dict[str, str]) -> list[str]:
    """Names of the nodes KubeVirt can place VMs on; fills ``addresses`` with their InternalIPs."""
    labelled = any(((n.metadata and n.metadata.labels) or {}).get(SCHEDULABLE_LABEL) for n in items)
    out = []
    for node in items:
        name = str(node.metadata.name if node.metadata else "")
        for addr in (node.status.addresses or []) if node.status else []:
            if addr.type == "InternalIP":
                addresses[name] = str(addr.address)
        if node.spec and node.spec.unschedulable:
            continue
        if any(t.effect in ("NoSchedule", "NoExecute") for t in (node.spec.taints or []) if node.spec):
            continue
        if labelled and (node.metadata.labels or {}).get(SCHEDULABLE_LABEL) != "true":
            continue
        out.append(name)
    return sorted(out)


def ensure_namespace(kube: Kube, name: str, run_id: str, given: bool) -> bool:
    """Create ``virtproof-<run-id>`` (labelled); a namespace the scenario names must exist."""
    kube.conn.limiter.acquire()
    try:
        kube.core.read_namespace(name)
        return False
    except ApiException as exc:
        if exc.status == 403 and given:
            # A namespaced Role (deploy/rbac/virtproof-role.yaml) may not read its own Namespace
            # object: the preflight's access reviews already said what it may do there.
            return False
        if exc.status != 404:
            raise
    if given:
        raise PlatformError(f"namespace {name!r} named by the scenario does not exist")
    kube.conn.limiter.acquire()
    kube.core.create_namespace(cast(Any, manifests.namespace(name, run_id)))
    return True
