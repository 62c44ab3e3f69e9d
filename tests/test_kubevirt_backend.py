"""The KubeVirt backend against the real control plane: a sim-kubevirt lab (etcd, kube-apiserver
with RBAC and admission, controller-manager, scheduler, KubeVirt v1.9.0's CRDs, virt-api webhooks
and virt-controller) with two paper nodes, through the suites' least-privilege kubeconfig as the
product uses it. Boot timelines from watch events, the server's own rejections, migrations,
cancel, evacuation through the eviction API, preflight and restricted identities made on the
real server, cleanup, namespaces, relist after a real 410 Gone, redaction.

One lab for the module; tests that change the cluster (cordon, the KubeVirt CR, extra Nodes,
restricted ServiceAccounts) undo it in ``finally``. CDI is not in this lab: the disk import
tests stay on the fake (``test_kubevirt_backend_cdi.py``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.controlplane.lab import SUITE_KUBECONFIG, SimKubeVirtLabHandle
from virtproof.lab.kubevirt import cleanup
from virtproof.lab.kubevirt.config import ImageConfig, KubeVirtConfig
from virtproof.lab.kubevirt.connect import ConnectOptions, connect
from virtproof.lab.kubevirt.manifests import DiskSource, virtual_machine
from virtproof.lab.kubevirt.platform import KubeVirtPlatform, KubeVirtVM
from virtproof.lab.kubevirt.preflight import ClusterNotReady, PermissionsMissing
from virtproof.lab.kubevirt.resources import MIGRATION_POLICY, VM, VM_LABEL, VMI, VMIM
from virtproof.lab.platform import (
    Capability,
    CapabilityMissing,
    MigrationPolicy,
    MigrationResult,
    PlatformError,
    Timeline,
    VMSpec,
)
from virtproof.reports.results import Sample, SampleSink, new_run_id, read_samples
from virtproof.scenarios.model import Scenario
from virtproof.suites.engines.migration import migration_unavailable

from controlplane_support import control_plane, wait_until

pytestmark = [pytest.mark.slow]

DISK = "registry.invalid/virtproof/micro:latest"  # paper nodes pull nothing
MICRO = ImageConfig(DiskSource(container_disk=DISK), user="fedora")
RBAC = Path(__file__).resolve().parent.parent / "deploy" / "rbac" / "virtproof-clusterrole.yaml"


@dataclass
class Lab:
    handle: SimKubeVirtLabHandle
    admin: client.ApiClient

    @property
    def suite_kubeconfig(self) -> Path:
        return self.handle.paths.kubeconfig(SUITE_KUBECONFIG)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.admin)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.admin)


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[Lab]:
    control_plane()
    scenario = Scenario.model_validate({"name": "kv-backend", "suites": {"boot": {}},
                                        "lab": {"kind": "sim-kubevirt", "nodes": 2, "paper": True}})
    handle = SimKubeVirtLabHandle(scenario, f"kvbackend-{new_run_id()}")
    try:
        started = time.monotonic()
        handle.up(lambda message: print(message, file=sys.stderr, flush=True)).close()
        print(f"sim-kubevirt lab up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        conn = connect(ConnectOptions(str(handle.paths.kubeconfig("admin")), qps=500, burst=500))
        yield Lab(handle, conn.api)
        conn.close()
    finally:
        handle.down()


def _config(kubeconfig: Path, state: Path, run_id: str = "t1", **overrides: Any) -> KubeVirtConfig:
    base: dict[str, Any] = {
        "run_id": run_id, "state_dir": state, "connect": ConnectOptions(str(kubeconfig), qps=200, burst=200),
        "images": {"micro": MICRO}, "delete_timeout_s": 30.0,
    }
    base.update(overrides)
    return KubeVirtConfig(**base)


def _open(lab: Lab, state: Path, run_id: str = "t1", kubeconfig: Path | None = None,
          **overrides: Any) -> KubeVirtPlatform:
    return KubeVirtPlatform.open(_config(kubeconfig or lab.suite_kubeconfig, state, run_id, **overrides))


@contextmanager
def _platform(lab: Lab, state: Path, run_id: str = "t1", **kw: Any) -> Iterator[KubeVirtPlatform]:
    p = _open(lab, state, run_id, **kw)
    try:
        yield p
    finally:
        cleanup.clean(p.kube, run_id)
        p.close()


@pytest.fixture
def platform(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KubeVirtPlatform]:
    # one run id (and namespace) per test: a namespace still terminating never meets the next test
    with _platform(lab, tmp_path, _run_id(request)) as p:
        yield p


def _run_id(request: pytest.FixtureRequest) -> str:
    return "t-" + request.node.name.removeprefix("test_")[:20].replace("_", "-").rstrip("-")


def _wait(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    return wait_until(what, check, timeout, 0.3)


@contextmanager
def _cordoned(lab: Lab, node: str) -> Iterator[None]:
    lab.core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        lab.core.patch_node(node, {"spec": {"unschedulable": False}})


def _rules_without(denied: Callable[[str, str], bool]) -> list[dict[str, Any]]:
    """deploy/rbac's ClusterRole, less the (verb, resource) pairs ``denied`` names."""
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d and d["kind"] == "ClusterRole")
    rules: list[dict[str, Any]] = []
    for rule in role["rules"]:
        if "nonResourceURLs" in rule:
            rules.append(rule)
            continue
        for resource in rule["resources"]:
            verbs = [v for v in rule["verbs"] if not denied(v, resource)]
            if verbs:
                rules.append({"apiGroups": rule["apiGroups"], "resources": [resource], "verbs": verbs})
    return rules


@contextmanager
def _identity(lab: Lab, name: str, rules: list[dict[str, Any]], directory: Path) -> Iterator[Path]:
    """A ServiceAccount bound to ``rules`` cluster-wide, and a kubeconfig with its token."""
    rbac = client.RbacAuthorizationV1Api(lab.admin)
    sa_ns = "virtproof"
    lab.core.create_namespaced_service_account(sa_ns, {"metadata": {"name": name}})
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_ns}]})
    try:
        token = lab.core.create_namespaced_service_account_token(name, sa_ns, {"spec": {"audiences": [],
                                                                                 "expirationSeconds": 3600}})
        config = yaml.safe_load(lab.suite_kubeconfig.read_text())
        config["users"] = [{"name": u["name"], "user": {"token": token.status.token}} for u in config["users"]]
        path = directory / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        yield path
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
        lab.core.delete_namespaced_service_account(name, sa_ns)


# -- boot -----------------------------------------------------------------------------------

def test_boot_timeline_comes_from_watch_events_in_kubevirt_phase_order(
    platform: KubeVirtPlatform, tmp_path: Path
) -> None:
    vm = platform.create_vm(VMSpec(name="boot-1", memory_mib=256))
    running = platform.wait_running(vm, 120)
    assert running.name == "running" and running.source == "platform"
    names = ["created", "vmi_pending", "vmi_scheduling", "vmi_scheduled", "running", "vmi_ready"]
    events = {name: vm.timeline.get(name) for name in names}
    platform.recorder.wait_for(lambda: vm.timeline.get("vmi_ready") is not None, 30)
    events = {name: vm.timeline.get(name) for name in names}
    assert all(events.values()), vm.timeline.events
    stamps = [events[n].timestamp for n in names[1:]]  # type: ignore[union-attr]
    # phaseTransitionTimestamps are metav1.Time: whole seconds, stamped by virt-controller and
    # virt-handler, in KubeVirt's phase order
    assert stamps[:-1] == sorted(stamps[:-1]) and all(s == int(s) for s in stamps[:-1]), stamps
    # the Ready condition's lastTransitionTime comes from the launcher pod (the kubelet's clock,
    # whole seconds too): it may read one second before the Running stamp, never more
    assert stamps[-1] >= stamps[-2] - 1.0, stamps
    assert vm.node in ("node0", "node1")
    ep = vm.ssh_endpoint()
    assert ep.host == platform.service_address() and 30000 <= ep.port <= 32767  # a real NodePort
    platform.recorder.wait_for(lambda: vm.timeline.get("vm_ready") is not None, 30)
    quantiles = {q.quantile_name: q for q in platform.latency_quantiles()}
    for name in ("VMICreated", "VMIPending", "VMIScheduling", "VMIScheduled", "VMIRunning", "VMReady"):
        assert name in quantiles and quantiles[name].count == 1, quantiles
    assert quantiles["VMIScheduled"].p99 >= quantiles["VMIPending"].p99 >= 0
    latencies = platform.vm_latencies()
    assert set(latencies) == {"boot-1"} and len(latencies["boot-1"]) >= 6
    assert int(latencies["boot-1"]["VMIRunning"]) == quantiles["VMIRunning"].p50  # whole ms, like kube-burner
    # kube-burner's VMReady: when the harness saw the VM Ready (kube-burner handleUpdateVM's
    # time.Now(), pkg/measurements/vmi_latency.go), from the VM's creationTimestamp; never the
    # Ready condition's own lastTransitionTime. Our VMI Ready time keeps its own name.
    seen = vm.timeline.get("vm_ready_observed") or vm.timeline.get("vm_ready")
    assert seen is not None and seen.source == "harness" and seen.clock == "local"
    assert vm.record.vm_created is not None
    assert latencies["boot-1"]["VMReady"] == round((seen.timestamp - vm.record.vm_created) * 1000, 3)
    assert "VMIReady" not in latencies["boot-1"] and vm.timeline.get("vmi_ready") is not None
    # ... and what the suites record of them at the end of a session (suites/conftest.py's
    # platform_latencies fixture, driven here without a suite session)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    samples = _recorded_platform_latencies(platform, run_dir)
    assert len(samples) == len(latencies["boot-1"]) >= 6
    running = [s for s in samples if s.metric == "vmi_latency.VMIRunning_ms"]
    assert [(int(s.value), s.unit) for s in running] == [(quantiles["VMIRunning"].p50, "ms")], running
    assert running[0].labels.items() >= {"vm": "boot-1", "time_source": "platform"}.items(), running[0].labels
    platform.delete_vm(vm)
    assert vm.record.vmi_deleted
    platform.delete_vm(vm)  # idempotent


def _recorded_platform_latencies(platform: KubeVirtPlatform, run_dir: Path) -> list[Sample]:
    """The samples suites/conftest.py's ``platform_latencies`` records after a session, with its
    ``record`` fixture: the fixtures' own functions (imported here, not as fixtures of this module)."""
    from virtproof.suites import conftest as suite_fixtures

    record = suite_fixtures.record.__wrapped__(SampleSink(run_dir), platform)
    session = suite_fixtures.platform_latencies.__wrapped__(platform, record)
    next(session)  # the suite session would run here
    next(session, None)  # its end: the platform's latencies become samples
    return read_samples(run_dir).samples


def test_api_request_counts_come_from_the_api_servers_own_metrics(platform: KubeVirtPlatform) -> None:
    assert Capability.API_METRICS in platform.capabilities  # deploy/rbac grants GET /metrics
    before = {(r.verb, r.group, r.resource): r.count for r in platform.api_requests()}
    platform.wait_running(platform.create_vm(VMSpec(name="api-1")), 120)
    after = {(r.verb, r.group, r.resource): r.count for r in platform.api_requests()}
    # apiserver_request_total's verb is the HTTP method (POST), LIST/WATCH/APPLY for those
    key = ("POST", "kubevirt.io", "virtualmachines")
    assert after.get(key, 0) - before.get(key, 0) >= 1, sorted(after)
    # virt-controller made the VMI and its launcher pod
    assert after.get(("POST", "", "pods"), 0) > before.get(("POST", "", "pods"), 0)
    assert after.get(("POST", "kubevirt.io", "virtualmachineinstances"), 0) >= 1
    assert after.get(("WATCH", "kubevirt.io", "virtualmachineinstances"), 0) >= 1


def test_real_server_rejects_invalid_objects_with_422(platform: KubeVirtPlatform) -> None:
    body = virtual_machine(VMSpec(name="bad"), platform.namespace, "t1", DiskSource(container_disk=DISK), None)
    body["spec"]["template"]["spec"]["domain"]["cpu"] = {"cores": "one"}  # not an integer: the CRD schema
    with pytest.raises(ApiException) as schema:
        platform.kube.create(VM, body, platform.namespace)
    assert schema.value.status == 422
    message = json.loads(schema.value.body)["message"]
    assert "spec.template.spec.domain.cpu.cores" in message and "integer" in message, message
    body = virtual_machine(VMSpec(name="bad"), platform.namespace, "t1", DiskSource(container_disk=DISK), None)
    body["spec"]["running"] = True  # with runStrategy: virt-api's validating webhook
    with pytest.raises(ApiException) as webhook:
        platform.kube.create(VM, body, platform.namespace)
    assert webhook.value.status == 422
    message = json.loads(webhook.value.body)["message"]
    assert 'admission webhook "virtualmachine-validator.kubevirt.io" denied' in message and "exclusive" in message
    # through the platform: the server-side dry-run says what is wrong before anything is made
    with pytest.raises(PlatformError, match=r"the cluster refuses a VirtualMachine like Bad_1.*HTTP 422"):
        platform.create_vm(VMSpec(name="Bad_1"))
    assert platform.kube.list_objects(VM, platform.namespace) == []
    assert platform.kube.core.list_namespaced_service(platform.namespace).items == []


def test_unconfigured_image_and_unsupported_bus_are_clear_errors(platform: KubeVirtPlatform) -> None:
    with pytest.raises(PlatformError, match="image 'windows' is not configured"):
        platform.create_vm(VMSpec(name="w", image="windows"))
    with pytest.raises(PlatformError, match="no ide disk bus"):
        platform.create_vm(VMSpec(name="i", disk_bus="ide"))


# -- migration ------------------------------------------------------------------------------

def test_migration_records_vmim_phases_and_migration_state(platform: KubeVirtPlatform) -> None:
    vm = platform.create_vm(VMSpec(name="mig-1"))
    platform.wait_running(vm, 120)
    source = vm.node
    target = next(n for n in platform.nodes() if n != source)
    result = platform.migrate(vm, target, MigrationPolicy(timeout_s=120))
    assert result.ok and result.source == source and result.target == target, result
    assert result.time_source == "platform" and result.resolution_s == 1.0 and result.mode == "precopy"
    assert result.finished >= result.started and result.setup_s is not None and result.setup_s >= 0
    assert vm.node == target
    assert vm.record.migration_state["completed"] and vm.record.migration_state["targetNode"] == target
    phases = platform.recorder.migrations["mig-1-mig-1"].phases
    # virt-controller's phases, in its order (pkg/virt-controller/watch/migration/migration.go)
    order = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running", "Succeeded"]
    assert list(phases) == [p for p in order if p in phases] and phases.get("Succeeded"), phases
    assert {"Pending", "Scheduling", "Succeeded"} <= set(phases)
    assert sorted(phases.values()) == list(phases.values())
    vmim = platform.kube.get(VMIM, "mig-1-mig-1", platform.namespace)
    assert vmim is not None and vmim["status"]["phase"] == "Succeeded"
    with pytest.raises(PlatformError, match="already runs"):
        platform.migrate(vm, target, MigrationPolicy())


def test_postcopy_goes_through_a_labelled_migration_policy(platform: KubeVirtPlatform) -> None:
    vm = platform.create_vm(VMSpec(name="pc-1"))
    platform.wait_running(vm, 120)
    target = next(n for n in platform.nodes() if n != vm.node)
    result = platform.migrate(vm, target, MigrationPolicy(mode="postcopy", bandwidth_mibps=64, timeout_s=120))
    assert result.ok, result
    policies = [p for p in platform.kube.list_objects(MIGRATION_POLICY)
                if p["metadata"].get("labels", {}).get("virtproof.io/run-id") == platform.config.run_id]
    assert [p["spec"].get("allowPostCopy") for p in policies] == [True]
    state = vm.record.migration_state
    # virt-controller matched the policy by the VMI's label and handed its configuration down
    assert state.get("migrationPolicyName") == policies[0]["metadata"]["name"], state
    assert state["migrationConfiguration"]["allowPostCopy"] is True
    assert state["migrationConfiguration"]["bandwidthPerMigration"] == "64Mi"
    # the mode it really ran in: a paper migration is over before completionTimeoutPerGiB
    assert result.mode == "precopy" and state.get("mode") == "PreCopy"


def test_timed_out_migration_is_cancelled_by_deleting_it(lab: Lab, platform: KubeVirtPlatform) -> None:
    vm = platform.create_vm(VMSpec(name="slow-1"))
    platform.wait_running(vm, 120)
    target = next(n for n in platform.nodes() if n != vm.node)
    # the target node is full: the target pod stays Pending, the migration in Scheduling
    filler = {"metadata": {"name": "filler", "labels": {"virtproof.io/test": "filler"}},
              "spec": {"nodeName": target, "containers": [{
                  "name": "c", "image": "registry.invalid/filler",
                  "resources": {"requests": {"cpu": "31900m", "memory": "127Gi"}}}]}}
    lab.core.create_namespaced_pod(platform.namespace, filler)
    try:
        started = time.monotonic()
        result = platform.migrate(vm, target, MigrationPolicy(timeout_s=3.0))
        assert time.monotonic() - started < 30
        assert not result.ok and re.search(r"cancelled \(deleted in phase (Pending|Scheduling), before the hand-off\)",
                                           result.error or ""), result
        assert vm.node != target
        _wait("the cancelled migration gone", lambda: platform.kube.get(VMIM, "slow-1-mig-1", platform.namespace)
              is None)
        phases = platform.recorder.migrations["slow-1-mig-1"].phases
        assert "Succeeded" not in phases and "Running" not in phases, phases
    finally:
        lab.core.delete_namespaced_pod("filler", platform.namespace, grace_period_seconds=0)
    assert platform.wait_running(vm, 5).name == "running" and vm.alive()


def test_evacuate_cordons_evicts_and_kubevirt_migrates(lab: Lab, platform: KubeVirtPlatform) -> None:
    vms = [platform.create_vm(VMSpec(name=f"ev-{i}", node="node0")) for i in range(2)]
    for vm in vms:
        platform.wait_running(vm, 120)
    on_node0 = [vm for vm in vms if vm.node == "node0"]
    assert on_node0, [vm.node for vm in vms]
    results = platform.evacuate("node0", timeout=120)
    assert len(results) == len(on_node0) and all(r.ok for r in results), results
    assert all(vm.node == "node1" for vm in vms)
    node = lab.core.read_node("node0")
    assert not node.spec.unschedulable  # uncordoned again
    assert not platform.cordoned
    # virt-api's eviction admitter answered each eviction by marking the VMI for evacuation, and
    # virt-controller's evacuation controller made the migration (not the harness)
    for vm in on_node0:
        vmi = platform.kube.get(VMI, vm.name, platform.namespace)
        assert vmi is not None and vmi["status"]["migrationState"]["sourceNode"] == "node0"
    assert all(not m["metadata"]["name"].startswith("ev-") for m in platform.kube.list_objects(VMIM,
                                                                                             platform.namespace))


def _vm_not_made_by_create_vm(platform: KubeVirtPlatform, spec: VMSpec,
                              change: Callable[[dict[str, Any]], None]) -> KubeVirtVM:
    """A VM whose template differs from what ``create_vm`` sends (``change`` edits its
    ``spec.template.spec``), tracked by the platform like one of its own; nothing else differs."""
    body = platform.manifest_for(spec)
    change(body["spec"]["template"]["spec"])
    timeline = Timeline()
    record = platform.recorder.track(spec.name, timeline)
    timeline.add("created", time.time(), "harness")
    platform.kube.create(VM, body, platform.namespace)
    vm = KubeVirtVM(spec, timeline, record, platform, 0, 0)
    platform.vms[spec.name] = vm
    return vm


@contextmanager
def _node_filled(lab: Lab, platform: KubeVirtPlatform, node: str) -> Iterator[None]:
    """A pod bound to ``node`` asking for all of it: no migration target pod can be scheduled there."""
    filler = {"metadata": {"name": "filler", "labels": {"virtproof.io/test": "filler"}},
              "spec": {"nodeName": node, "containers": [{
                  "name": "c", "image": "registry.invalid/filler",
                  "resources": {"requests": {"cpu": "31900m", "memory": "127Gi"}}}]}}
    lab.core.create_namespaced_pod(platform.namespace, filler)
    try:
        yield
    finally:
        lab.core.delete_namespaced_pod("filler", platform.namespace, grace_period_seconds=0)


def _time_out_unschedulable(lab: Lab, platform: KubeVirtPlatform, migration: str) -> None:
    """KubeVirt's own per-migration timeout for an unschedulable target pod, shortened to 1 s."""
    lab.custom.patch_namespaced_custom_object(
        VMIM.group, VMIM.version, platform.namespace, VMIM.plural, migration,
        {"metadata": {"annotations": {"kubevirt.io/migrationUnschedulablePodTimeoutSeconds": "1"}}})


def test_a_migration_that_fails_before_the_hand_off_ends_on_its_failed_phase(
        lab: Lab, platform: KubeVirtPlatform) -> None:
    """virt-controller fails a migration whose target pod stays unschedulable past
    ``kubevirt.io/migrationUnschedulablePodTimeoutSeconds`` (default 5 min): it deletes the target
    pod (handlePendingPodTimeout, deleteTimedOutTargetPod) and marks the migration Failed ("Migration
    target pod was removed during active migration", updateStatus; KubeVirt v1.9.0
    pkg/virt-controller/watch/migration/migration.go). Nothing reaches the VMI's migrationState: the
    wait must end on the migration object's Failed phase, not at the policy's timeout."""
    vm = platform.create_vm(VMSpec(name="prefail-1"))
    platform.wait_running(vm, 120)
    source = vm.node
    target = next(n for n in platform.nodes() if n != source)
    timeout_s = 240.0
    outcome: list[MigrationResult] = []
    with _node_filled(lab, platform, target):
        started = time.monotonic()
        mover = threading.Thread(target=lambda: outcome.append(
            platform.migrate(vm, target, MigrationPolicy(timeout_s=timeout_s))))
        mover.start()
        name = "prefail-1-mig-1"
        _wait("the migration object", lambda: platform.kube.get(VMIM, name, platform.namespace), 60)
        _time_out_unschedulable(lab, platform, name)
        mover.join(timeout_s + 90)
        elapsed = time.monotonic() - started
    assert outcome, "migrate() did not return"
    result = outcome[0]
    assert elapsed < timeout_s / 2, f"the wait ran {elapsed:.0f} s of its {timeout_s:.0f} s timeout: {result}"
    assert not result.ok and result.error is not None
    assert re.search(r"migration prefail-1-mig-1 Failed before the hand-off after phase (Scheduling|Pending)",
                     result.error), result.error
    assert "cancelled" not in result.error and "not finished" not in result.error  # not the timeout path
    vmim = platform.kube.get(VMIM, name, platform.namespace)
    assert vmim is not None and vmim["status"]["phase"] == "Failed"
    assert vm.node == source and platform.wait_running(vm, 5).name == "running" and vm.alive()


def test_an_evacuation_migration_that_fails_before_the_hand_off_ends_the_wait(
        lab: Lab, platform: KubeVirtPlatform) -> None:
    """The evacuation's migration is virt-controller's own (kubevirt-evacuation-*, without the
    run's label). When it fails before the hand-off (its target pod unschedulable: the other node
    is full) nothing reaches the VMI's migrationState, so the evacuation must end on that
    object's Failed phase with its reason, not at its timeout."""
    vm = platform.create_vm(VMSpec(name="evfail-1", node="node0"))
    platform.wait_running(vm, 120)
    assert vm.node == "node0"
    timeout_s = 240.0
    outcome: list[list[MigrationResult]] = []
    with _node_filled(lab, platform, "node1"):
        started = time.monotonic()
        drainer = threading.Thread(target=lambda: outcome.append(platform.evacuate("node0", timeout=timeout_s)))
        drainer.start()
        names = _wait("virt-controller's evacuation migration", lambda: [
            m["metadata"]["name"] for m in lab.custom.list_namespaced_custom_object(
                VMIM.group, VMIM.version, platform.namespace, VMIM.plural)["items"]
            if m["metadata"]["name"].startswith("kubevirt-evacuation-")], 90)
        _time_out_unschedulable(lab, platform, names[0])
        drainer.join(timeout_s + 90)
        elapsed = time.monotonic() - started
    assert outcome, "evacuate() did not return"
    assert elapsed < timeout_s / 2, f"the wait ran {elapsed:.0f} s of its {timeout_s:.0f} s timeout: {outcome}"
    [result] = outcome[0]
    assert not result.ok and result.error is not None
    assert re.search(rf"evacuation migration {names[0]} Failed before the hand-off after phase (Scheduling|Pending)",
                     result.error), result.error
    assert "not finished" not in result.error  # not the timeout path
    assert not lab.core.read_node("node0").spec.unschedulable  # uncordoned again


def test_evictions_that_start_no_migration_end_the_evacuation_at_once(lab: Lab, platform: KubeVirtPlatform) -> None:
    """Three launcher pods on node0 whose eviction starts no live migration, each answered its own
    way by the real API server, and an evacuation that ends at once with each reason:

    - a VMI that cannot live-migrate (pod network through ``bridge``: InterfaceNotLiveMigratable)
      with evictionStrategy LiveMigrate: virt-api's pod-eviction admitter answers 429 "... is not
      live-migratable" (KubeVirt v1.9.0 pkg/virt-api/webhooks/validating-webhook/admitters/
      pod-eviction-admitter.go admitLauncherPod);
    - evictionStrategy None under a PodDisruptionBudget: the admitter lets it through and the
      eviction REST handler answers 429 "Cannot evict pod as it would violate the pod's disruption
      budget." with a DisruptionBudget cause (Kubernetes pkg/registry/core/pod/storage/eviction.go
      checkAndDecrement; admission runs first, so a LiveMigrate VMI never meets its PDB);
    - evictionStrategy None without a PDB: 201, the pod is deleted and the VMI stops.

    Before, the last two read as "evacuation started" and the drain waited its full timeout.
    (KubeVirt v1.9 makes no PDB of its own: its disruptionbudget controller only deletes the ones
    older releases made, pkg/virt-controller/watch/drain/disruptionbudget.)"""
    policy = client.PolicyV1Api(lab.admin)
    def bridged(template: dict[str, Any]) -> None:
        template["domain"]["devices"]["interfaces"] = [{"name": "default", "bridge": {}}]

    def no_strategy(template: dict[str, Any]) -> None:
        template["evictionStrategy"] = "None"

    vms = [_vm_not_made_by_create_vm(platform, VMSpec(name="bridged-1", node="node0"), bridged),
           _vm_not_made_by_create_vm(platform, VMSpec(name="budget-1", node="node0"), no_strategy),
           _vm_not_made_by_create_vm(platform, VMSpec(name="plain-1", node="node0"), no_strategy)]
    for vm in vms:
        platform.wait_running(vm, 120)
    assert [vm.node for vm in vms] == ["node0"] * 3
    _wait("bridged-1 reported not live-migratable", lambda: any(
        c.get("type") == "LiveMigratable" and c.get("status") == "False"
        for c in (platform.kube.get(VMI, "bridged-1", platform.namespace) or {}).get("status", {}).get(
            "conditions", [])))
    pdb = {"metadata": {"name": "vp-budget"},
           "spec": {"minAvailable": 1, "selector": {"matchLabels": {VM_LABEL: "budget-1"}}}}
    policy.create_namespaced_pod_disruption_budget(platform.namespace, pdb)
    try:
        # kube-controller-manager's disruption controller has counted the launcher pod
        _wait("the PDB's status", lambda: (policy.read_namespaced_pod_disruption_budget(
            "vp-budget", platform.namespace).status.current_healthy or 0) == 1)
        timeout_s = 240.0
        started = time.monotonic()
        results = {r.vm: r for r in platform.evacuate("node0", timeout=timeout_s)}
        elapsed = time.monotonic() - started
    finally:
        policy.delete_namespaced_pod_disruption_budget("vp-budget", platform.namespace)
    assert elapsed < timeout_s / 2, f"the evacuation ran {elapsed:.0f} s of its {timeout_s:.0f} s: {results}"
    assert set(results) == {"bridged-1", "budget-1", "plain-1"} and not any(r.ok for r in results.values())
    bridged, budget, plain = (results[n].error or "" for n in ("bridged-1", "budget-1", "plain-1"))
    assert bridged.startswith("cannot live-migrate: ") and "is not live-migratable" in bridged, bridged
    assert 'admission webhook "virt-launcher-eviction-interceptor.kubevirt.io"' in bridged, bridged
    assert budget.startswith("eviction refused by a PodDisruptionBudget, so nothing moves: "), budget
    assert "The disruption budget vp-budget needs 1 healthy pods and has 1 currently" in budget, budget
    assert plain.startswith("evicted without a live migration: "), plain
    assert not lab.core.read_node("node0").spec.unschedulable  # uncordoned again
    for name in ("bridged-1", "budget-1"):  # refused: still running where they were, never marked
        vmi = platform.kube.get(VMI, name, platform.namespace)
        assert vmi is not None and vmi["status"]["nodeName"] == "node0" and vmi["status"]["phase"] == "Running"
        assert not vmi["status"].get("evacuationNodeName") and not vmi["status"].get("migrationState"), vmi
    assert platform.kube.list_objects(VMIM, platform.namespace) == []


# -- preflight ------------------------------------------------------------------------------

def test_missing_permissions_are_one_error_listing_all(lab: Lab, tmp_path: Path) -> None:
    denied = {("delete", "virtualmachines"), ("watch", "virtualmachineinstances"), ("list", "nodes")}
    rules = _rules_without(lambda verb, resource: (verb, resource) in denied)
    with _identity(lab, "vp-denied", rules, tmp_path) as kubeconfig, pytest.raises(PermissionsMissing) as err:
        _open(lab, tmp_path, "t-missing", kubeconfig=kubeconfig)
    text = str(err.value)
    assert text.startswith("missing 3 permission(s)"), text
    assert "delete virtualmachines.kubevirt.io in namespace virtproof-t-missing" in text
    assert "watch virtualmachineinstances.kubevirt.io" in text and "list nodes (cluster-wide)" in text


def test_optional_permissions_only_remove_capabilities(lab: Lab, tmp_path: Path) -> None:
    rules = _rules_without(lambda verb, resource: resource in ("migrationpolicies", "datavolumes",
                                                               "pods/eviction"))
    with _identity(lab, "vp-optional", rules, tmp_path) as kubeconfig, \
            _platform(lab, tmp_path, "t-optional", kubeconfig=kubeconfig) as p:
        assert Capability.LIVE_MIGRATION in p.capabilities
        for cap in (Capability.POST_COPY, Capability.NODE_DRAIN, Capability.DISK_IMPORT,
                    Capability.MIGRATION_BANDWIDTH_LIMIT):
            assert cap not in p.capabilities
        with pytest.raises(CapabilityMissing, match="post_copy"):
            p.migrate(p.create_vm(VMSpec(name="x")), "node1", MigrationPolicy(mode="postcopy"))


def test_the_namespaced_role_is_enough_for_a_run_in_its_namespace(lab: Lab, tmp_path: Path) -> None:
    """deploy/rbac/virtproof-role.yaml as shipped: a Role in the scenario's namespace and a small
    ClusterRole to read nodes and KubeVirt, bound to a ServiceAccount on the real server."""
    docs = [d for d in yaml.safe_load_all((RBAC.parent / "virtproof-role.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "Role")
    cluster_read = next(d for d in docs if d["kind"] == "ClusterRole")
    ns, name = role["metadata"]["namespace"], "vp-namespaced"
    rbac = client.RbacAuthorizationV1Api(lab.admin)
    lab.core.create_namespace({"metadata": {"name": ns}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": role["rules"]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "virtproof"}]})
    try:
        with _identity(lab, name, cluster_read["rules"], tmp_path) as kubeconfig, \
                _platform(lab, tmp_path, "t-role", kubeconfig=kubeconfig, namespace=ns) as p:
            assert not p.created_namespace
            assert Capability.LIVE_MIGRATION in p.capabilities and Capability.NODE_DRAIN not in p.capabilities
            vm = p.create_vm(VMSpec(name="role-1"))
            p.wait_running(vm, 120)
            target = next(n for n in p.nodes() if n != vm.node)
            assert p.migrate(vm, target, MigrationPolicy(timeout_s=120)).ok
            deleted = cleanup.clean(p.kube, "t-role", ns)
            assert any("VirtualMachine virtproof-runs/role-1" in d for d in deleted), deleted
            _wait("the run's objects gone", lambda: not cleanup.leftovers(p.kube, "t-role", ns), 60)
    finally:
        rbac.delete_namespaced_role_binding(name, ns)
        rbac.delete_namespaced_role(name, ns)
        lab.core.delete_namespace(ns)


def _kubevirt_cr(lab: Lab) -> dict[str, Any]:
    cr: dict[str, Any] = lab.custom.get_namespaced_custom_object("kubevirt.io", "v1", "kubevirt", "kubevirts",
                                                                 "kubevirt")
    return cr


def test_cluster_allow_post_copy_is_read_from_the_kubevirt_cr(lab: Lab, tmp_path: Path) -> None:
    rules = _rules_without(lambda verb, resource: resource == "migrationpolicies")
    lab.custom.patch_namespaced_custom_object("kubevirt.io", "v1", "kubevirt", "kubevirts", "kubevirt",
                                              {"spec": {"configuration": {"migrations": {"allowPostCopy": True}}}})
    try:
        with _identity(lab, "vp-nopolicies", rules, tmp_path) as kubeconfig:
            p = _open(lab, tmp_path, "t-crpostcopy", kubeconfig=kubeconfig)
            try:
                assert Capability.POST_COPY in p.capabilities
                assert Capability.MIGRATION_BANDWIDTH_LIMIT not in p.capabilities
                assert p.accel == "tcg" and p.versions()["kubevirt"] == "v1.9.0"
                assert p.versions()["kubernetes"] == "v1.34.4"
            finally:
                cleanup.clean(p.kube, "t-crpostcopy")
                p.close()
    finally:
        lab.custom.patch_namespaced_custom_object("kubevirt.io", "v1", "kubevirt", "kubevirts", "kubevirt",
                                                  {"spec": {"configuration": {"migrations": {"allowPostCopy": None}}}})
    p = _open(lab, tmp_path, "t-crpostcopy2", kubeconfig=None)
    try:
        assert not p.cluster_facts.migrations.get("allowPostCopy")
    finally:
        cleanup.clean(p.kube, "t-crpostcopy2")
        p.close()


def test_kubevirt_not_available_or_cdi_missing_is_a_clear_error(lab: Lab, tmp_path: Path) -> None:
    # CDI is not installed in this lab: required, it is a clear error; otherwise no disk import
    with pytest.raises(ClusterNotReady, match="CDI"):
        _open(lab, tmp_path, "t-cdi", require_cdi=True)
    with _platform(lab, tmp_path, "t-nocdi") as p:
        assert Capability.DISK_IMPORT not in p.capabilities and "cdi" not in p.versions()
    # KubeVirt's CR not Available (as virt-operator reports a deployment in progress)
    status = _kubevirt_cr(lab)["status"]
    unavailable = [c if c["type"] != "Available" else {**c, "status": "False", "reason": "DeploymentInProgress",
                                                           "message": "Deploying version v1.9.0"}
                   for c in status["conditions"]]
    lab.custom.patch_namespaced_custom_object_status("kubevirt.io", "v1", "kubevirt", "kubevirts", "kubevirt",
                                                     {"status": {"conditions": unavailable}})
    try:
        with pytest.raises(ClusterNotReady, match="not Available"):
            _open(lab, tmp_path, "t-kvdown")
    finally:
        lab.custom.patch_namespaced_custom_object_status("kubevirt.io", "v1", "kubevirt", "kubevirts", "kubevirt",
                                                         {"status": {"conditions": status["conditions"]}})


def test_single_node_cluster_has_no_live_migration(lab: Lab, tmp_path: Path) -> None:
    with _cordoned(lab, "node1"), _platform(lab, tmp_path, "t-single") as p:
        assert Capability.LIVE_MIGRATION not in p.capabilities and Capability.BOOT in p.capabilities
        assert list(p.nodes()) == ["node0"]
        # the migration suite's skip says why, not only which capability is missing
        assert migration_unavailable(p, [Capability.LIVE_MIGRATION]) == (
            "only one schedulable node (node0): live migration needs two (platform kubevirt lacks: live_migration)")
    with _platform(lab, tmp_path, "t-two") as p:
        assert migration_unavailable(p, [Capability.LIVE_MIGRATION]) is None


def test_nodes_are_the_ones_kubevirt_schedules_on(lab: Lab, platform: KubeVirtPlatform) -> None:
    extra = [{"apiVersion": "v1", "kind": "Node", "metadata": {
                 "name": "control-plane", "labels": {"kubevirt.io/schedulable": "true"}},
              "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}},
             {"apiVersion": "v1", "kind": "Node", "metadata": {
                 "name": "no-handler", "labels": {"kubevirt.io/schedulable": "false"}}, "spec": {}}]
    for node in extra:
        lab.core.create_node(node)
    try:
        assert list(platform.nodes()) == ["node0", "node1"]
        real = {a.type: a.address for a in lab.core.read_node("node1").status.addresses}["InternalIP"]
        assert platform.node_address("node1") == real and real.startswith("127.")
    finally:
        for node in extra:
            lab.core.delete_node(node["metadata"]["name"])


# -- cleanup and namespaces -----------------------------------------------------------------

def test_cleanup_deletes_only_objects_labelled_with_the_run(lab: Lab, tmp_path: Path) -> None:
    lab.core.create_namespace({"metadata": {"name": "team-space"}})
    a = _open(lab, tmp_path / "a", run_id="run-a", namespace="team-space")
    b = _open(lab, tmp_path / "b", run_id="run-b", namespace="team-space")
    try:
        for p in (a, b):
            p.wait_running(p.create_vm(VMSpec(name=f"vm-{p.config.run_id}")), 120)
        foreign = virtual_machine(VMSpec(name="not-ours"), "team-space", "x", DiskSource(container_disk=DISK), None)
        del foreign["metadata"]["labels"]["virtproof.io/run-id"]
        del foreign["spec"]["template"]["metadata"]["labels"]["virtproof.io/run-id"]
        a.kube.create(VM, foreign, "team-space")
        deleted = cleanup.clean(a.kube, "run-a")
        assert any("vm-run-a" in d for d in deleted) and not any("run-b" in d for d in deleted), deleted
        # deletion is asynchronous on the real server: the VM waits for virt-controller's finalizer
        assert all(x.terminating for x in cleanup.leftovers(a.kube, "run-a")), cleanup.leftovers(a.kube, "run-a")
        assert cleanup.clean(a.kube, "run-a") == []  # nothing deleted twice
        _wait("run-a's objects gone", lambda: not cleanup.leftovers(a.kube, "run-a"), 60)
        names = {o["metadata"]["name"] for o in a.kube.list_objects(VM, "team-space")}
        assert names == {"not-ours", "vm-run-b"}
        assert lab.core.read_namespace("team-space").status.phase == "Active"  # not ours: never deleted
    finally:
        cleanup.clean(b.kube, "run-b")
        a.close()
        b.close()
        lab.core.delete_namespace("team-space")


def test_run_namespace_is_created_labelled_and_removed_by_cleanup(lab: Lab, tmp_path: Path) -> None:
    p = _open(lab, tmp_path, "t-ns")
    try:
        ns = lab.core.read_namespace("virtproof-t-ns")
        assert ns.metadata.labels["virtproof.io/run-id"] == "t-ns"
        assert p.created_namespace
        assert "Namespace virtproof-t-ns (run t-ns)" in cleanup.clean(p.kube, "t-ns")
        phase = _wait("namespace going", lambda: _ns_phase(lab, "virtproof-t-ns") in ("Terminating", "gone"))
        assert phase
    finally:
        p.close()


def _ns_phase(lab: Lab, name: str) -> str:
    try:
        return str(lab.core.read_namespace(name).status.phase)
    except ApiException as exc:
        if exc.status == 404:
            return "gone"
        raise


def test_named_namespace_must_exist(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="'absent' named by the scenario does not exist"):
        _open(lab, tmp_path, namespace="absent")


def test_lab_clean_removes_only_runs_whose_local_owner_is_gone(lab: Lab, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from virtproof.core.processes import boot_id
    from virtproof.lab.clusters.leftovers import leftovers_cleaner

    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(lab.suite_kubeconfig))
    owners = {"dead-run": 2**22 + 12345, "live-run": os.getpid()}
    platforms = []
    try:
        for run_id in ("dead-run", "live-run", "foreign-run"):
            p = _open(lab, tmp_path / run_id, run_id=run_id)
            platforms.append(p)
            p.create_vm(VMSpec(name=f"vm-{run_id}"))
            if run_id in owners:
                state = tmp_path / "state" / "kubevirt" / run_id
                state.mkdir(parents=True)
                (state / "owner.json").write_text(json.dumps({"pid": owners[run_id], "boot_id": boot_id()}))
        removed = leftovers_cleaner()
        assert removed and all("(run dead-run)" in line for line in removed), removed
        runs = {"dead-run", "live-run", "foreign-run"}
        left = {item.run_id for item in cleanup.leftovers(platforms[0].kube) if not item.terminating}
        assert left & runs == {"live-run", "foreign-run"}
        assert all(item.terminating for item in cleanup.leftovers(platforms[0].kube, "dead-run"))
    finally:
        for p in platforms:
            cleanup.clean(p.kube, p.config.run_id)
            p.close()


# -- the watch ------------------------------------------------------------------------------

def test_informer_relists_after_410_gone_and_keeps_recording(platform: KubeVirtPlatform) -> None:
    from virtproof.lab.kubevirt.informer import Informer
    from virtproof.lab.kubevirt.resources import Kube

    class Expiring(Informer):
        """Resumes once from resourceVersion 1, long compacted away: what a watch that was down
        past etcd's compaction (and the watch cache's window) resumes from."""

        expire = False
        gone = 0

        def _follow(self, rv: str) -> str:
            if self.expire:
                self.expire, rv = False, "1"
            out = super()._follow(rv)
            if rv == "1" and out == "<relist>":
                self.gone += 1
            return out

    seen: list[tuple[str, str]] = []
    kube = Kube(platform.conn)
    informer = Expiring(kube, VMI, platform.namespace, platform.selector,
                        lambda kind, obj, _: seen.append((kind, obj["metadata"]["name"])), idle_timeout_s=0.5)
    try:
        informer.start()
        assert informer.synced.wait(10)
        platform.wait_running(platform.create_vm(VMSpec(name="gone-1")), 120)
        assert ("SYNC", "gone-1") not in seen
        informer.expire = True
        informer._interrupt()  # drop the current watch: it resumes from an expired resourceVersion
        _wait("the real server's 410 Gone", lambda: informer.gone, 20)
        platform.wait_running(platform.create_vm(VMSpec(name="gone-2")), 120)
        assert platform.recorder.wait_for(lambda: ("ADDED", "gone-2") in seen or ("SYNC", "gone-2") in seen, 20)
        assert ("SYNC", "gone-1") in seen  # relisted after 410
        assert informer.error is None
    finally:
        informer.stop()


# -- secrets --------------------------------------------------------------------------------

def test_secrets_never_reach_logs_or_errors(lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = str(yaml.safe_load(lab.suite_kubeconfig.read_text())["users"][0]["user"]["token"])
    caplog.set_level(logging.DEBUG)
    p = _open(lab, tmp_path, "t-secrets")
    try:
        logging.getLogger("virtproof.lab.kubevirt").warning("token is %s", token)
        logging.getLogger("urllib3").debug("Authorization: Bearer %s", token)
        vm = p.create_vm(VMSpec(name="sec-1"))
        p.wait_running(vm, 120)
        assert p.redact(f"x {token} y") == "x <redacted> y"
        host_key = p.keys().host_private_pem
        logging.getLogger("virtproof.lab.kubevirt").info("%s", host_key)
        secret = lab.core.read_namespaced_secret("sec-1-cloudinit", p.namespace)  # the key went in a Secret
        assert secret.data and "userdata" in {k.lower() for k in secret.data}
        vm_obj = p.kube.get(VM, "sec-1", p.namespace)
        assert "PRIVATE KEY" not in json.dumps(vm_obj)
    finally:
        cleanup.clean(p.kube, "t-secrets")
        p.close()
        p.conn.redactor.uninstall()
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert token not in text and "<redacted>" in text
    assert "OPENSSH PRIVATE KEY" not in text


def test_kubeconfig_keys_passwords_and_provider_tokens_are_redacted(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import base64

    pem = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v1FCLoMDfmSHBZ6sUvG3l2lNvqxBvY5oWx0pN\n"
           "-----END PRIVATE KEY-----\n")
    key_b64 = base64.b64encode(pem.encode()).decode()
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"client-certificate-data": key_b64, "client-key-data": key_b64,
                                         "username": "admin", "password": "hunter2-secret-pw"}},
                  {"name": "o", "user": {"auth-provider": {"name": "oidc", "config": {
                      "id-token": "eyJhbGciOiJSUzI1NiJ9.oidc-id-token", "refresh-token": "refresh-abcdef123"}}}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    caplog.set_level(logging.DEBUG)
    conn = connect(ConnectOptions(str(path)))
    try:
        log = logging.getLogger("kubernetes")
        for secret in (key_b64, pem, "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v1FCLoMDfmSHBZ6sUvG3l2lNvqxBvY5oWx0pN",
                       "hunter2-secret-pw", "eyJhbGciOiJSUzI1NiJ9.oidc-id-token", "refresh-abcdef123"):
            log.debug("leaking %s here", secret)
            assert secret.strip() not in conn.redactor.redact(f"x {secret} y")
    finally:
        conn.close()
    assert "hunter2" not in caplog.text and "MC4CAQAw" not in caplog.text and "oidc-id-token" not in caplog.text
    assert caplog.text.count("<redacted>") >= 6
