"""The node agent's status builders against hand-written expectations from the real sources.

Each expectation below was written from the Go source named beside it (Kubernetes v1.34.4
``pkg/kubelet``, KubeVirt v1.9.0 ``pkg/virt-handler`` and ``pkg/virt-launcher``), not from the
agent's output.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from virtproof.lab.simnodes.informer import Store, WorkQueue
from virtproof.lab.simnodes.migration import LauncherOptions, migration_data_size_gb, quantity_to_mebibytes
from virtproof.lab.simnodes.nodestatus import (
    LEASE_RENEW_S,
    conditions_changed,
    heartbeat_patch,
    lease_body,
    node_conditions,
    node_status_patch,
)
from virtproof.lab.simnodes.podstatus import ContainerExit, PodRun, desired_status, image_id, status_patch
from virtproof.lab.simnodes.runtime import guest_name
from virtproof.lab.simnodes.times import metav1_time, micro_time, parse_time
from virtproof.lab.simnodes.vmistatus import (
    CREATE_MIGRATION_TARGET,
    MIGRATION_TARGET_LABEL,
    DomainFacts,
    migratable_conditions,
    running_status,
    source_failed,
    target_ack,
    target_cleanup,
)

Obj = dict[str, Any]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
GATE = "kubevirt.io/virtual-machine-unpaused"


def test_metav1_time_truncates_to_whole_seconds() -> None:
    # apimachinery metav1.Time.MarshalJSON: RFC3339 in UTC, the fraction dropped (not rounded)
    assert metav1_time(T0 + 0.999) == "2027-01-15T08:00:00Z"
    assert micro_time(T0 + 0.25) == "2027-01-15T08:00:00.250000Z"
    assert parse_time("2027-01-15T08:00:00Z") == T0


def launcher_pod(gate_status: str | None = "True") -> Obj:
    conditions: list[Obj] = [
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2027-01-15T07:59:58Z"}
    ]
    if gate_status is not None:  # virt-controller owns this one
        conditions.insert(0, {"type": GATE, "status": gate_status, "lastProbeTime": "2027-01-15T07:59:58Z",
                              "lastTransitionTime": "2027-01-15T07:59:58Z", "reason": "NotPaused",
                              "message": "the virtual machine is not paused"})
    return {
        "metadata": {"name": "virt-launcher-vm0-abcde", "namespace": "default", "uid": "pod-uid-1", "generation": 1,
                     "labels": {"kubevirt.io": "virt-launcher"}},
        "spec": {
            "nodeName": "node0", "readinessGates": [{"conditionType": GATE}],
            "initContainers": [{"name": "volumecontainerdisk", "image": "quay.io/containerdisks/fedora:latest"}],
            "containers": [{"name": "compute", "image": "registry.invalid/kubevirt/virt-launcher:v1.9.0"}],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": conditions},
    }


def by_type(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status["conditions"]}


def test_image_id_is_a_digest_virt_controller_accepts() -> None:
    # virt-controller's target pod render needs "<repo>@sha256:<64 hex>" (spike REPORT §3.8)
    image = "quay.io/containerdisks/fedora:latest"
    assert image_id(image) == "quay.io/containerdisks/fedora@sha256:" + hashlib.sha256(image.encode()).hexdigest()
    assert image_id("registry:5000/img").startswith("registry:5000/img@sha256:")
    assert image_id("a/b@sha256:" + "0" * 64) == "a/b@sha256:" + "0" * 64


def test_running_launcher_pod_as_the_kubelet_reports_it() -> None:
    pod = launcher_pod()
    status = desired_status(pod, PodRun(T0, "198.18.0.2", "198.18.1.10"), T0 + 2)
    assert status["phase"] == "Running"
    # generateAPIPodStatus: others' conditions first, then the kubelet's in this order
    assert [c["type"] for c in status["conditions"]] == [
        GATE, "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"
    ]
    conds = by_type(status)
    assert conds[GATE] == pod["status"]["conditions"][0]  # untouched
    for ctype in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"):
        assert conds[ctype]["status"] == "True" and "reason" not in conds[ctype]
        assert conds[ctype]["observedGeneration"] == 1  # PodObservedGenerationTracking, Beta in 1.34
    # updateLastTransitionTime: an unchanged status keeps its time, a new or changed one gets now
    assert conds["PodScheduled"]["lastTransitionTime"] == "2027-01-15T07:59:58Z"
    assert conds["Ready"]["lastTransitionTime"] == "2027-01-15T08:00:02Z"
    compute = status["containerStatuses"][0]
    assert compute == {
        "name": "compute", "state": {"running": {"startedAt": "2027-01-15T08:00:00Z"}}, "lastState": {},
        "ready": True, "restartCount": 0, "image": "registry.invalid/kubevirt/virt-launcher:v1.9.0",
        "imageID": image_id("registry.invalid/kubevirt/virt-launcher:v1.9.0"),
        "containerID": compute["containerID"], "started": True,
    }
    assert compute["containerID"].startswith("containerd://") and len(compute["containerID"]) == 13 + 64
    init = status["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed" and init["state"]["terminated"]["exitCode"] == 0
    assert init["ready"] is True and init["started"] is False
    assert (status["hostIP"], status["hostIPs"], status["podIP"], status["podIPs"]) == (
        "198.18.0.2", [{"ip": "198.18.0.2"}], "198.18.1.10", [{"ip": "198.18.1.10"}]
    )
    assert status["startTime"] == "2027-01-15T08:00:00Z" and status["qosClass"] == "Burstable"
    assert status["observedGeneration"] == 1


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        (None, f'corresponding condition of pod readiness gate "{GATE}" does not exist.'),
        ("False", f'the status of pod readiness gate "{GATE}" is not "True", but False'),
    ],
)
def test_readiness_gate_keeps_the_pod_unready(gate: str | None, message: str) -> None:
    # status/generate.go GeneratePodReadyCondition
    status = desired_status(launcher_pod(gate), PodRun(T0, "198.18.0.2", "198.18.1.10"), T0)
    ready = by_type(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "ReadinessGatesNotReady", message)
    assert by_type(status)["ContainersReady"]["status"] == "True"


@pytest.mark.parametrize(("code", "phase", "reason", "container_reason"),
                         [(0, "Succeeded", "PodCompleted", "Completed"), (1, "Failed", "PodFailed", "Error")])
def test_exited_launcher(code: int, phase: str, reason: str, container_reason: str) -> None:
    pod = launcher_pod()
    run = PodRun(T0, "198.18.0.2", "198.18.1.10")
    pod["status"] = desired_status(pod, run, T0)
    status = desired_status(pod, PodRun(T0, "198.18.0.2", "198.18.1.10", ContainerExit(code, T0 + 30)), T0 + 31)
    conds = by_type(status)
    assert status["phase"] == phase  # getPhase with restartPolicy Never
    assert (conds["ContainersReady"]["status"], conds["ContainersReady"]["reason"]) == ("False", reason)
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", reason)
    assert conds["PodReadyToStartContainers"]["status"] == "False"  # the sandbox is gone
    assert conds["Initialized"].get("reason") == ("PodCompleted" if code == 0 else None)
    assert conds["Ready"]["lastTransitionTime"] == "2027-01-15T08:00:31Z"
    assert conds["PodScheduled"]["lastTransitionTime"] == "2027-01-15T07:59:58Z"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["finishedAt"]) == (
        code, container_reason, "2027-01-15T08:00:30Z")
    assert status["containerStatuses"][0]["ready"] is False


def test_a_terminal_pod_never_runs_again() -> None:
    pod = launcher_pod()
    pod["status"]["phase"] = "Succeeded"
    assert desired_status(pod, PodRun(T0, "198.18.0.2", None), T0)["phase"] == "Succeeded"


def test_status_patch_only_when_something_changed() -> None:
    pod = launcher_pod()
    run = PodRun(T0, "198.18.0.2", "198.18.1.10")
    patch = status_patch(pod, desired_status(pod, run, T0))
    assert patch is not None
    assert patch["metadata"] == {"uid": "pod-uid-1"}  # statusutil.PatchPodStatus's UID precondition
    assert GATE not in {c["type"] for c in patch["status"]["conditions"]}  # never another owner's condition
    assert patch["status"]["containerStatuses"][0]["state"] == {
        "running": {"startedAt": "2027-01-15T08:00:00Z"}, "waiting": None, "terminated": None}
    applied = copy.deepcopy(pod)
    applied["status"] = desired_status(pod, run, T0)
    assert status_patch(applied, desired_status(applied, run, T0 + 60)) is None


# --- virt-handler ------------------------------------------------------------------------


def vmi(interface: Obj | None = None, volumes: list[Obj] | None = None, volume_status: list[Obj] | None = None) -> Obj:
    return {
        "metadata": {"name": "vm0", "namespace": "default", "uid": "vmi-uid",
                     "labels": {"kubevirt.io/nodeName": "node0"}, "annotations": {}},
        "spec": {
            "domain": {"devices": {"interfaces": [interface or {"name": "default", "masquerade": {}}],
                                   "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "256Mi"}}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": volumes if volumes is not None else [
                {"name": "containerdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:latest"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config"}},
            ],
        },
        "status": {"phase": "Scheduled", "nodeName": "node0",
                   "phaseTransitionTimestamps": [
                       {"phase": "Scheduled", "phaseTransitionTimestamp": "2027-01-15T07:59:59Z"}],
                   "interfaces": [{"name": "default", "podInterfaceName": "eth0", "infoSource": "domain"}],
                   "volumeStatus": volume_status or [],
                   "memory": {"guestAtBoot": "256Mi", "guestRequested": "256Mi"}},
    }


def test_container_disks_make_a_live_migratable_block_migration() -> None:
    # vm.go checkVolumesForMigration: a volume that is neither a PVC nor a read-only CD-ROM means
    # block migration; calculateLiveMigrationCondition: no reason, no times
    conditions, method = migratable_conditions(vmi())
    assert method == "BlockMigration"
    assert conditions == [
        {"type": "LiveMigratable", "status": "True", "lastProbeTime": None, "lastTransitionTime": None},
        {"type": "StorageLiveMigratable", "status": "True", "lastProbeTime": None, "lastTransitionTime": None},
    ]


def test_rwo_pvc_is_not_live_migratable() -> None:
    rwo = {"claimName": "data", "accessModes": ["ReadWriteOnce"]}
    volume_status = [{"name": "disk", "persistentVolumeClaimInfo": rwo}]
    conditions, method = migratable_conditions(
        vmi(volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "data"}}], volume_status=volume_status))
    assert conditions[0]["status"] == "False" and conditions[0]["reason"] == "DisksNotLiveMigratable"
    assert conditions[0]["message"] == ("cannot migrate VMI: PVC data is not shared, live migration requires that "
                                        "all PVCs must be shared (using ReadWriteMany access mode)")
    rwx = [{"name": "disk", "persistentVolumeClaimInfo": {"claimName": "data", "accessModes": ["ReadWriteMany"]}}]
    conditions, method = migratable_conditions(
        vmi(volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "data"}}], volume_status=rwx))
    assert conditions[0]["status"] == "True" and method == "LiveMigration"


def test_bridge_on_the_pod_network_is_not_live_migratable() -> None:
    # pkg/network/vmispec/interface.go VerifyVMIMigratable
    conditions, _ = migratable_conditions(vmi({"name": "default", "bridge": {}}))
    message = "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network"
    assert conditions[0] == {"type": "LiveMigratable", "status": "False", "reason": "InterfaceNotLiveMigratable",
                             "message": message, "lastProbeTime": None, "lastTransitionTime": None}
    assert conditions[1]["status"] == "False" and conditions[1]["reason"] == "NotMigratable"
    allowed = vmi({"name": "default", "bridge": {}})
    allowed["metadata"]["annotations"]["kubevirt.io/allow-pod-bridge-network-live-migration"] = ""
    assert migratable_conditions(allowed)[0][0]["status"] == "True"


def test_running_status_as_update_vmi_status_writes_it() -> None:
    facts = DomainFacts("pc-q35-7.2", "198.18.2.10", "52:56:c6:12:02:0a", "256Mi")
    new = running_status(vmi(), facts, T0 + 0.7)
    status = new["status"]
    assert status["phase"] == "Running"
    assert status["phaseTransitionTimestamps"][-1] == {
        "phase": "Running", "phaseTransitionTimestamp": "2027-01-15T08:00:00Z"}
    assert status["machine"] == {"type": "pc-q35-7.2"}
    assert status["guestOSInfo"] == {}  # no guest agent
    assert status["selinuxContext"] == "none"
    assert status["memory"] == {"guestAtBoot": "256Mi", "guestRequested": "256Mi", "guestCurrent": "256Mi"}
    assert status["interfaces"] == [{"name": "default", "infoSource": "domain", "queueCount": 1, "linkState": "up",
                                     "mac": "52:56:c6:12:02:0a", "ipAddress": "198.18.2.10",
                                     "ipAddresses": ["198.18.2.10"], "podInterfaceName": "eth0"}]
    assert status["migrationMethod"] == "BlockMigration"
    assert {c["type"] for c in status["conditions"]} == {"LiveMigratable", "StorageLiveMigratable"}
    again = running_status(new, facts, T0 + 30)
    assert again["status"] == status  # SetVMIPhaseTransitionTimestamp: one entry per phase; nothing else moved


def migrating_vmi() -> Obj:
    obj: Obj = running_status(vmi(), DomainFacts("pc-q35-7.2", "198.18.2.10", None), T0)
    obj["metadata"]["labels"][MIGRATION_TARGET_LABEL] = "node1"
    obj["metadata"]["annotations"][CREATE_MIGRATION_TARGET] = "true"
    obj["status"]["evacuationNodeName"] = "node0"
    obj["status"]["conditions"].append({"type": "MigrationRequired", "status": "True"})
    obj["status"]["migrationState"] = {"migrationUid": "m1", "sourceNode": "node0", "targetNode": "node1",
                                       "targetPod": "virt-launcher-vm0-xyz", "startTimestamp": "2027-01-15T08:00:10Z"}
    return obj


def test_target_ack_moves_the_vmi_to_the_target() -> None:
    # migration-target.go updateStatus + ackMigrationCompletion
    new = target_ack(migrating_vmi(), "node1", T0 + 12.5, T0 + 10, T0 + 12.9, "PreCopy")
    state, status = new["status"]["migrationState"], new["status"]
    assert status["nodeName"] == "node1" and new["metadata"]["labels"]["kubevirt.io/nodeName"] == "node1"
    assert state["endTimestamp"] == "2027-01-15T08:00:12Z" and state["startTimestamp"] == "2027-01-15T08:00:10Z"
    assert state["targetNodeDomainReadyTimestamp"] == "2027-01-15T08:00:12Z" and state["targetNodeDomainDetected"]
    assert state["mode"] == "PreCopy" and "completed" not in state  # finalizeMigration sets it, next sync
    assert status["migrationTransport"] == "Unix" and "evacuationNodeName" not in status
    assert "MigrationRequired" not in {c["type"] for c in status["conditions"]}


def test_target_cleanup_keeps_the_annotation_only_after_a_failure() -> None:
    done = migrating_vmi()
    done["status"]["migrationState"]["completed"] = True
    cleaned = target_cleanup(done)
    assert MIGRATION_TARGET_LABEL not in cleaned["metadata"]["labels"]
    assert CREATE_MIGRATION_TARGET not in cleaned["metadata"]["annotations"]
    failed = source_failed(migrating_vmi(), T0 + 10, T0 + 20, "PreCopy", "Live migration has been aborted", "Succeeded")
    state = failed["status"]["migrationState"]
    fields = ("failed", "completed", "endTimestamp", "abortStatus", "failureReason")
    assert tuple(state[f] for f in fields) == (
        True, True, "2027-01-15T08:00:20Z", "Succeeded", "Live migration has been aborted")
    assert CREATE_MIGRATION_TARGET in target_cleanup(failed)["metadata"]["annotations"]


# --- virt-launcher's migration options ----------------------------------------------------


def test_bandwidth_in_mebibytes_as_quantity_to_mebibyte() -> None:
    # pkg/virt-launcher/virtwrap/converter/vcpu QuantityToMebiByte
    assert [quantity_to_mebibytes(q) for q in ("0Mi", "512Ki", "64Mi", "1Gi", "100M")] == [0, 1, 64, 1024, 95]


def test_launcher_options_from_the_migration_configuration() -> None:
    obj = migrating_vmi()
    obj["status"]["migrationState"]["migrationConfiguration"] = {
        "allowAutoConverge": False, "allowPostCopy": True, "bandwidthPerMigration": "64Mi",
        "completionTimeoutPerGiB": 2, "progressTimeout": 150}
    options = LauncherOptions.from_vmi(obj)
    # allowWorkloadDisruption unset: virt-handler takes allowPostCopy's value
    assert (options.allow_post_copy, options.allow_workload_disruption, options.bandwidth_mibps) == (True, True, 64)
    assert options.acceptable_completion_s == 2  # 2 s/GiB x ceil(256Mi / 1 GB) = 2 x 1
    policy = options.policy()
    assert policy.mode == "postcopy" and policy.bandwidth_mibps == 64 and policy.timeout_s > 150
    defaults = LauncherOptions.from_vmi(vmi())
    assert (defaults.completion_timeout_per_gib, defaults.progress_timeout) == (150, 150)
    assert not defaults.allow_post_copy
    assert defaults.policy().bandwidth_mibps == 1 << 20  # 0 = unlimited


def test_migration_data_size_rounds_up_to_gigabytes() -> None:
    # manager.go getVMIMigrationDataSize: guest memory else request, ScaledValue(resource.Giga)
    obj = vmi()
    assert migration_data_size_gb(obj) == 1
    obj["spec"]["domain"]["memory"] = {"guest": "2Gi"}
    assert migration_data_size_gb(obj) == 3  # 2.147 GB


# --- kubelet node status, lease; virt-handler heartbeat ------------------------------------


def test_node_conditions_as_the_kubelet_setters_write_them() -> None:
    initial = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "created by the lab",
                "lastHeartbeatTime": "2027-01-15T07:00:00Z", "lastTransitionTime": "2027-01-15T07:00:00Z"}]
    conditions = node_conditions(initial, T0)
    assert [c["type"] for c in conditions] == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    ready = conditions[-1]
    assert (ready["reason"], ready["message"]) == ("KubeletReady", "kubelet is posting ready status")
    assert ready["lastTransitionTime"] == "2027-01-15T07:00:00Z"  # same status: the old transition time
    assert ready["lastHeartbeatTime"] == "2027-01-15T08:00:00Z"
    assert conditions[0]["reason"] == "KubeletHasSufficientMemory" and conditions[0]["lastTransitionTime"] == (
        "2027-01-15T08:00:00Z")
    later = node_conditions(conditions, T0 + 10)
    assert not conditions_changed(conditions, later)  # only heartbeats moved
    node = {"metadata": {"name": "node0"}, "status": {"conditions": conditions, "capacity": {
        "devices.kubevirt.io/kvm": "1k", "devices.kubevirt.io/tun": "1k", "devices.kubevirt.io/vhost-net": "1k"},
        "allocatable": {"devices.kubevirt.io/kvm": "1k", "devices.kubevirt.io/tun": "1k",
                        "devices.kubevirt.io/vhost-net": "1k"}}}
    assert node_status_patch(node, T0 + 10, force=False) is None
    assert node_status_patch(node, T0 + 300, force=True) is not None


def test_lease_and_heartbeat() -> None:
    assert LEASE_RENEW_S == 10.0  # 0.25 x 40 s
    lease = lease_body("node0", "node-uid", T0)
    assert lease["spec"] == {"holderIdentity": "node0", "leaseDurationSeconds": 40,
                             "renewTime": "2027-01-15T08:00:00.000000Z"}
    assert lease["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "node0",
                                                     "uid": "node-uid"}]
    renewed = lease_body("node0", "node-uid", T0 + 10.5, {**lease, "metadata": {**lease["metadata"],
                                                                                   "resourceVersion": "7"}})
    assert renewed["metadata"]["resourceVersion"] == "7" and renewed["spec"]["renewTime"].endswith("10.500000Z")
    assert heartbeat_patch(T0) == {"metadata": {
        "labels": {"kubevirt.io/schedulable": "true", "cpumanager": "false", "kubevirt.io/cpumanager": "false"},
        "annotations": {"kubevirt.io/heartbeat": "2027-01-15T08:00:00Z"}}}
    assert heartbeat_patch(T0, schedulable=False)["metadata"]["labels"]["kubevirt.io/schedulable"] == "false"


# --- the machinery -------------------------------------------------------------------------


def test_work_queue_deduplicates_and_serializes_a_key() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert queue.get() == "a"
    queue.add("a")  # re-added while being processed: comes back after done()
    assert queue.get() == "b"
    queue.done("b")
    queue.done("a")
    assert queue.get() == "a"
    queue.done("a")
    queue.add_after("c", 0.05)
    assert queue.get() == "c"
    queue.close()
    assert queue.get() is None


def test_store_keeps_the_newest_version() -> None:
    store = Store()
    store.put({"metadata": {"name": "x", "namespace": "d", "resourceVersion": "10"}})
    _, stored = store.put({"metadata": {"name": "x", "namespace": "d", "resourceVersion": "9"}})
    kept = store.get("d/x")
    assert not stored and kept is not None and kept["metadata"]["resourceVersion"] == "10"


def test_guest_names_are_unique_per_vmi_and_short() -> None:
    assert guest_name("default", "vm0", "73c65faa-d8a9-45c4") == "default-vm0-73c65f"
    assert len(guest_name("n" * 60, "v" * 60, "abcdef12")) <= 47
