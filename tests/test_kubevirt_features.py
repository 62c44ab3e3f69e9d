"""What a KubeVirt release and configuration allow (issue 12 items 1, 3, 4), from the KubeVirt CR,
and the objects the backend sends accordingly, validated against the pinned release's schema."""

from __future__ import annotations

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt import schema as kubevirt_schema
from virtproof.lab.kubevirt.features import KubeVirtFeatures, parse_version
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.platform import MigrationPolicy, VMSpec


def _cr(version: str, gates: list[str] | None = None, migrations: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "spec": {"configuration": {"developerConfiguration": {"featureGates": gates or []},
                                   "migrations": migrations or {}}},
        "status": {"observedKubeVirtVersion": version, "phase": "Deployed"},
    }


def test_versions_parse() -> None:
    assert parse_version("v1.9.0") == (1, 9, 0)
    assert parse_version("v1.10.0-rc.2") == (1, 10, 0)
    assert parse_version("1.5.2") == (1, 5, 2)
    assert parse_version("main") is None


def test_added_node_selector_needs_v1_6() -> None:
    assert not KubeVirtFeatures.from_kubevirt_cr(_cr("v1.5.2")).added_node_selector
    assert KubeVirtFeatures.from_kubevirt_cr(_cr("v1.6.0")).added_node_selector
    assert KubeVirtFeatures.from_kubevirt_cr(_cr("v1.9.0")).added_node_selector
    assert not KubeVirtFeatures.from_kubevirt_cr(_cr("unknown")).added_node_selector


def test_max_downtime_needs_v1_9_and_the_stall_detection_gate() -> None:
    assert not KubeVirtFeatures.from_kubevirt_cr(_cr("v1.9.0")).max_downtime  # featureGates: []
    assert KubeVirtFeatures.from_kubevirt_cr(_cr("v1.9.0", ["MigrationStallDetection"])).max_downtime
    assert not KubeVirtFeatures.from_kubevirt_cr(_cr("v1.8.4", ["MigrationStallDetection"])).max_downtime


def test_cluster_wide_migration_configuration_is_read() -> None:
    features = KubeVirtFeatures.from_kubevirt_cr(_cr("v1.9.0", migrations={"allowPostCopy": True}))
    assert features.cluster_allows_post_copy and not features.cluster_allows_auto_converge


def test_a_vm_asked_onto_a_node_prefers_it_and_can_still_move() -> None:
    vm = manifests.virtual_machine(VMSpec("v", node="node0"), "ns", "run1", DiskSource(container_disk="a/b"), None)
    template = vm["spec"]["template"]["spec"]
    assert "nodeSelector" not in template, "a hard pin is copied into the migration target pod"
    terms = template["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in terms
    pref = terms["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"][0]
    assert pref == {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node0"]}
    assert kubevirt_schema.validate("kubevirt:v1.VirtualMachine", vm) == []


def test_post_copy_policy_switches_after_about_a_second_per_gib() -> None:
    body = manifests.migration_policy("run1", MigrationPolicy("postcopy"))
    assert body is not None
    assert body["spec"]["allowPostCopy"] is True and body["spec"]["completionTimeoutPerGiB"] == 1
    assert kubevirt_schema.validate("kubevirt:v1alpha1.MigrationPolicy", body) == []


def test_a_migration_names_a_target_only_when_asked() -> None:
    with_target = manifests.migration("m", "v", "ns", "run1", "node1")
    assert with_target["spec"]["addedNodeSelector"] == {"kubernetes.io/hostname": "node1"}
    assert "addedNodeSelector" not in manifests.migration("m", "v", "ns", "run1", None)["spec"]
    for body in (with_target, manifests.migration("m", "v", "ns", "run1", None)):
        assert kubevirt_schema.validate("kubevirt:v1.VirtualMachineInstanceMigration", body) == []
