"""Every object the KubeVirt backend and labs can send validates against KubeVirt's and CDI's
OpenAPI schemas (bundled in lab/kubevirt/schemas); the validator itself rejects invalid objects."""

from __future__ import annotations

import base64
import gzip
import itertools
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtproof.lab.clusters.install import cdi_cr, kubevirt_cr
from virtproof.lab.images import cloudinit, memcheck
from virtproof.lab.images.cacheroot import cache_root_default
from virtproof.lab.images.cloudinit import workload_files
from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt import schema as kubevirt_schema
from virtproof.lab.kubevirt.manifests import CloudInit, DiskSource, UnsupportedSpec
from virtproof.lab.kubevirt.preflight import NAMESPACE_PERMS, OPTIONAL, REQUIRED, Permission
from virtproof.lab.platform import MigrationPolicy, VMSpec


@pytest.fixture(autouse=True, scope="module")
def _schemas() -> None:
    kubevirt_schema.load_schemas()


CI = CloudInit("fedora", "ssh-ed25519 AAAAC3Nz client", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END",
               "ssh-ed25519 AAAA host")
SOURCES = [DiskSource(container_disk="quay.io/containerdisks/fedora:41"),
           DiskSource(http_url="http://10.0.0.1:8080/disk.qcow2", size="2Gi", storage_class="local"),
           DiskSource(data_volume="imported-disk")]


@pytest.mark.parametrize(("source", "bus", "nic", "cloud", "node", "scratch"), list(itertools.product(
    SOURCES, ["virtio", "scsi", "sata"], ["virtio", "e1000"], [CI, None], [None, "node-2"], [0, 64])))
def test_every_virtual_machine_validates(source: DiskSource, bus: str, nic: str, cloud: CloudInit | None,
                                         node: str | None, scratch: int) -> None:
    spec = VMSpec(name="vm-1", cpus=2, memory_mib=512, node=node, disk_bus=bus, nic_model=nic,  # type: ignore[arg-type]
                  scratch_disk_mib=scratch, labels=(("team", "qa"),))
    vm = manifests.virtual_machine(spec, "virtproof-r1", "r1", source, cloud)
    assert kubevirt_schema.validate("v1.VirtualMachine", vm) == []
    assert vm["metadata"]["labels"]["virtproof.io/run-id"] == "r1"
    assert vm["spec"]["template"]["metadata"]["labels"]["virtproof.io/run-id"] == "r1"
    assert vm["spec"]["runStrategy"] == "Always"
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"]["cores"] == 2 and domain["resources"]["requests"]["memory"] == "512Mi"
    for template in vm["spec"].get("dataVolumeTemplates", []):
        assert kubevirt_schema.validate("v1beta1.DataVolume", {"apiVersion": "cdi.kubevirt.io/v1beta1",
                                                               "kind": "DataVolume", **template}) == []


def test_cloud_init_injects_the_run_key_pins_the_host_key_and_starts_http() -> None:
    vm = manifests.virtual_machine(VMSpec(name="a"), "ns", "r1", SOURCES[0], CI)
    volume = next(v for v in vm["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)
    # issue 12 item 9: the host's private key never sits inline in the VM object
    assert volume["cloudInitNoCloud"] == {"secretRef": {"name": "a-cloudinit"}}
    assert "PRIVATE KEY" not in str(vm)
    secret = manifests.cloud_init_secret("a", "ns", "r1", CI)
    assert secret["metadata"]["name"] == "a-cloudinit" and secret["metadata"]["labels"]["virtproof.io/run-id"] == "r1"
    text = secret["stringData"]["userdata"]
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert CI.authorized_key in data["ssh_authorized_keys"]
    assert data["ssh_keys"]["ed25519_public"] == CI.host_public_key
    assert "httpd -p 80" in data["runcmd"][0][2]


@pytest.mark.parametrize("policy", [
    MigrationPolicy(mode="postcopy"), MigrationPolicy(mode="auto_converge"),
    MigrationPolicy(bandwidth_mibps=32), MigrationPolicy(downtime_limit_ms=50),
    MigrationPolicy(mode="postcopy", bandwidth_mibps=64, downtime_limit_ms=100)])
def test_migration_policies_validate(policy: MigrationPolicy) -> None:
    body = manifests.migration_policy("r1", policy)
    assert body is not None
    assert kubevirt_schema.validate("v1alpha1.MigrationPolicy", body) == []
    assert body["metadata"]["labels"] == {"virtproof.io/run-id": "r1"}


def test_plain_precopy_needs_no_policy() -> None:
    assert manifests.migration_policy("r1", MigrationPolicy()) is None


@pytest.mark.parametrize("target", [None, "node-2"])
def test_migration_validates(target: str | None) -> None:
    body = manifests.migration("vm-1-mig-1", "vm-1", "ns", "r1", target)
    assert kubevirt_schema.validate("v1.VirtualMachineInstanceMigration", body) == []


def test_data_volume_and_cluster_resources_validate() -> None:
    assert kubevirt_schema.validate("v1beta1.DataVolume", manifests.data_volume("d", "ns", "r1", SOURCES[1])) == []
    for emulation in (True, False):
        assert kubevirt_schema.validate("v1.KubeVirt", kubevirt_cr(emulation)) == []
    assert kubevirt_schema.validate("v1beta1.CDI", cdi_cr()) == []


@pytest.mark.parametrize(("field", "value"), [("disk_bus", "ide"), ("nic_model", "vmxnet3")])
def test_what_kubevirt_cannot_express_is_refused(field: str, value: str) -> None:
    spec = VMSpec(name="a", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(UnsupportedSpec, match=value):
        manifests.virtual_machine(spec, "ns", "r1", SOURCES[0], None)


def test_validator_rejects_virt_v2v_style_kubevirt_yaml() -> None:
    # virt-v2v 2.2 -o kubevirt puts cpu under resources and omits networks: not valid KubeVirt.
    vm = manifests.virtual_machine(VMSpec(name="a"), "ns", "r1", SOURCES[0], None)
    vm["spec"]["template"]["spec"]["domain"]["resources"]["cpu"] = {"cores": 1}
    vm["spec"]["runStrategy"] = 3
    vm["spec"]["bogus"] = True
    problems = kubevirt_schema.validate("v1.VirtualMachine", vm)
    text = "\n".join(problems)
    assert "spec.runStrategy" in text and "'bogus' was unexpected" in text and "'cpu' was unexpected" in text


def _rules(path: Path) -> set[tuple[str, str, str]]:
    granted = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                if "nonResourceURLs" in rule:  # e.g. /metrics: not a resource, checked by its own test
                    urls = itertools.product(rule["nonResourceURLs"], rule["verbs"])
                    granted.update(("", url, verb) for url, verb in urls)
                    continue
                for group, res, verb in itertools.product(rule["apiGroups"], rule["resources"], rule["verbs"]):
                    granted.add((group, res, verb))
    return granted


def _key(p: Permission) -> tuple[str, str, str]:
    return (p.group, f"{p.resource}/{p.subresource}" if p.subresource else p.resource, p.verb)


def test_shipped_cluster_role_grants_every_permission_the_preflight_checks(project_root: Path) -> None:
    granted = _rules(project_root / "deploy/rbac/virtproof-clusterrole.yaml")
    wanted = [*REQUIRED, *NAMESPACE_PERMS, *itertools.chain.from_iterable(OPTIONAL.values())]
    assert [p for p in wanted if _key(p) not in granted] == []
    assert ("", "/metrics", "get") in granted  # the scale suite's ApiMetrics reads the API server's counters


def test_role_variant_grants_the_required_set_without_namespaces(project_root: Path) -> None:
    granted = _rules(project_root / "deploy/rbac/virtproof-role.yaml")
    assert [p for p in REQUIRED if _key(p) not in granted] == []
    assert not any(res == "namespaces" for _, res, _ in granted)


# -- workloads for stock cloud images through cloud-init (issue 12 item 9) ---------------------
def test_cloud_init_ships_vp_memcheck_vp_dirty_and_usleep(tmp_path: Path) -> None:
    files = workload_files()
    ci = CloudInit("debian", "ssh-ed25519 AAAAC3Nz client", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END",
                   "ssh-ed25519 AAAA host", files=files)
    vm = manifests.virtual_machine(VMSpec(name="a"), "ns", "r1", SOURCES[0], ci)
    assert "write_files" not in str(vm) and "PRIVATE KEY" not in str(vm)  # all of it in the Secret
    user_data = yaml.safe_load(manifests.cloud_init_secret("a", "ns", "r1", ci)["stringData"]["userdata"])
    by_path = {f["path"]: f for f in user_data["write_files"]}
    assert {p: (f["permissions"], f["owner"]) for p, f in by_path.items()} == {
        memcheck.CLOUD_GUEST_PATH: ("0755", "root:root"), cloudinit.DIRTY_PATH: ("0755", "root:root"),
        cloudinit.USLEEP_PATH: ("0755", "root:root")}
    # the embedded vp-memcheck is exactly the static binary lab/images/memcheck.py builds
    entry = by_path[memcheck.CLOUD_GUEST_PATH]
    assert entry["encoding"] == "gz+b64"
    binary = memcheck.build_binary(cache_root_default())
    assert gzip.decompress(base64.b64decode(entry["content"])) == binary.read_bytes()
    assert binary.read_bytes()[:4] == b"\x7fELF"
    # vp-dirty is the micro guest's script, with the pid file made the login user's first
    dirty = by_path[cloudinit.DIRTY_PATH]["content"]
    shipped = (resources.files("virtproof.lab.images") / "vp-dirty.sh").read_text()
    assert dirty.startswith("#!/bin/sh\n" + cloudinit.DIRTY_PREAMBLE) and dirty.endswith(shipped.partition("\n")[2])
    # the usleep stand-in sleeps as long as busybox's would
    shim = tmp_path / "usleep"
    shim.write_text(by_path[cloudinit.USLEEP_PATH]["content"])
    started = time.monotonic()
    subprocess.run(["sh", str(shim), "1200000"], check=True, timeout=10)
    assert 1.1 < time.monotonic() - started < 5
    assert user_data["runcmd"] and "ssh_keys" in user_data  # the responder and the pinned host key stay


# -- the release in use: v1.9.0 and v1.8.4 bundled, the cluster's own documents first ----------
def test_a_v1_9_field_is_refused_by_the_bundled_v1_8_4_schema() -> None:
    policy = manifests.migration_policy("r1", MigrationPolicy(mode="postcopy", downtime_limit_ms=50))
    assert policy is not None
    assert kubevirt_schema.load_schemas("v1.9.0").validate("v1alpha1.MigrationPolicy", policy) == []
    assert kubevirt_schema.load_schemas("v1.8.4").validate("v1alpha1.MigrationPolicy", policy) == [
        "spec: Additional properties are not allowed ('maxDowntimeMs' was unexpected)"]
    # the same through ObjectSchemas (by apiVersion and kind), as the backend validates
    assert kubevirt_schema.bundled_object_schemas("v1.8.4").validate(policy) != []
    without = manifests.migration_policy("r1", MigrationPolicy(mode="postcopy"))
    assert without is not None and kubevirt_schema.bundled_object_schemas("v1.8.4").validate(without) == []


def test_without_the_clusters_documents_the_bundled_schema_of_its_release_is_used() -> None:
    asked: list[str] = []

    def none(path: str) -> dict[str, Any] | None:
        asked.append(path)
        return None

    found = kubevirt_schema.cluster_schemas(none, "v1.8.4", "v1.66.0")
    assert asked == ["/openapi/v3/apis/kubevirt.io/v1", "/openapi/v3/apis/migrations.kubevirt.io/v1alpha1",
                     "/openapi/v3/apis/cdi.kubevirt.io/v1beta1"]
    assert found.origin("kubevirt.io/v1") == "bundled kubevirt v1.8.4"
    assert found.origin("cdi.kubevirt.io/v1beta1") == "bundled cdi v1.66.0"
    vm = manifests.virtual_machine(VMSpec(name="a"), "ns", "r1", SOURCES[1], CI)
    assert found.covers(vm) and found.validate(vm) == []
    # a release nothing is bundled for: nothing to validate against here (the server's dry-run judges)
    unknown = kubevirt_schema.cluster_schemas(none, "v1.7.2", None)
    assert unknown.sources == {} and not unknown.covers(vm)
