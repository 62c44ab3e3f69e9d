"""Against a real cluster, the cluster's own truth: the KubeVirt groups' OpenAPI v3 documents as
the real kube-apiserver (1.34.4) publishes them for KubeVirt v1.9.0's CRDs, read by the suites'
least-privilege identity on a sim-kubevirt paper lab (issue 12, "validate against the release
you pin").

kube-apiserver serves ``/openapi/v3/apis/<group>/<version>`` for every CRD group from the CRDs'
structural schemas (k8s.io/apiextensions-apiserver pkg/controller/openapiv3), each kind's schema
tagged ``x-kubernetes-group-version-kind``, and lets every authenticated identity read it (the
``system:discovery`` ClusterRole grants ``/openapi``, ``/openapi/*``). The backend validates what
it sends against those documents before the server's dry-run (``KubeVirtPlatform.schemas``).
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from virtproof.lab.controlplane.lab import SUITE_KUBECONFIG, SimKubeVirtLabHandle
from virtproof.lab.factory import open_lab
from virtproof.lab.images import memcheck
from virtproof.lab.images.cloudinit import workload_files
from virtproof.lab.kubevirt import cleanup, manifests
from virtproof.lab.kubevirt.config import ImageConfig, KubeVirtConfig
from virtproof.lab.kubevirt.connect import Connection, ConnectOptions, connect, get_json
from virtproof.lab.kubevirt.manifests import CloudInit, DiskSource
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.kubevirt.resources import VM
from virtproof.lab.kubevirt.schema import cluster_schemas, openapi_v3_schemas
from virtproof.lab.platform import MigrationPolicy, PlatformError, VMSpec
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario, load_scenario

from controlplane_support import control_plane

pytestmark = [pytest.mark.slow]

DISK = "registry.invalid/virtproof/fedora:latest"  # paper nodes pull nothing
KV_DOC = "/openapi/v3/apis/kubevirt.io/v1"
SHIPPED = ("kind-kubevirt.yaml", "kubeadm-kubevirt.yaml", "existing.yaml")


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[tuple[SimKubeVirtLabHandle, Connection]]:
    control_plane()
    scenario = Scenario.model_validate({"name": "kv-openapi", "suites": {"boot": {}},
                                        "lab": {"kind": "sim-kubevirt", "nodes": 2, "paper": True}})
    handle = SimKubeVirtLabHandle(scenario, f"kvopenapi-{new_run_id()}")
    try:
        started = time.monotonic()
        handle.up(lambda message: print(message, file=sys.stderr, flush=True)).close()
        print(f"sim-kubevirt lab up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        conn = connect(ConnectOptions(str(handle.paths.kubeconfig(SUITE_KUBECONFIG))))
        try:
            yield handle, conn
        finally:
            conn.close()
    finally:
        handle.down()


def _cloud_init() -> CloudInit:
    return CloudInit("fedora", "ssh-ed25519 AAAAC3Nz client",
                     "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
                     "ssh-ed25519 AAAA host", files=workload_files())


def test_the_served_kubevirt_schemas_judge_what_the_backend_sends(lab: tuple[SimKubeVirtLabHandle, Connection],
                                                                 project_root: Path) -> None:
    _, conn = lab
    schemas = cluster_schemas(lambda path: get_json(conn, path), "v1.9.0", None)
    assert schemas.origin("kubevirt.io/v1") == f"cluster {KV_DOC}"
    migrations = "/openapi/v3/apis/migrations.kubevirt.io/v1alpha1"
    assert schemas.origin("migrations.kubevirt.io/v1alpha1") == f"cluster {migrations}"
    assert schemas.origin("cdi.kubevirt.io/v1beta1") is None  # no CDI here, none detected
    sources = [DiskSource(container_disk=DISK), DiskSource(data_volume="imported"),
               DiskSource(http_url="http://10.0.0.1/d.qcow2", size="3369Mi", access_modes=("ReadWriteOnce",),
                          volume_mode="Filesystem")]
    for source in sources:
        for cloud in (_cloud_init(), None):
            spec = VMSpec(name="vm-1", cpus=2, memory_mib=512, node="node-2", scratch_disk_mib=64)
            assert schemas.validate(manifests.virtual_machine(spec, "ns", "r1", source, cloud)) == []
    # v1.9's MigrationPolicy has maxDowntimeMs (the bundled v1.8.4 schema refuses it: test_kubevirt_manifests)
    policy = manifests.migration_policy("r1", MigrationPolicy(mode="postcopy", downtime_limit_ms=50))
    assert policy is not None and schemas.validate(policy) == []
    assert schemas.validate(manifests.migration("m", "vm-1", "ns", "r1", "node-2")) == []
    # the shipped scenarios' VMs, as their plans show them, are what this server accepts
    for name in SHIPPED:
        docs = _plan_documents(project_root / "scenarios" / name)
        vms = [d for d in docs if d["kind"] == "VirtualMachine"]
        assert vms and all(schemas.validate(vm) == [] for vm in vms), name
    # and the served schema refuses what KubeVirt does not define
    bad = manifests.virtual_machine(VMSpec(name="bad"), "ns", "r1", sources[0], None)
    bad["spec"]["template"]["spec"]["domain"]["resources"]["cpu"] = {"cores": 1}
    bad["spec"]["runStrategy"] = 3
    text = "\n".join(schemas.validate(bad))
    assert "spec.runStrategy: 3 is not of type 'string'" in text and "'cpu' was unexpected" in text


def test_the_cloud_init_secret_and_service_fit_the_servers_core_schema(
        lab: tuple[SimKubeVirtLabHandle, Connection], project_root: Path) -> None:
    _, conn = lab
    doc = get_json(conn, "/openapi/v3/api/v1")
    assert doc is not None
    core = openapi_v3_schemas({"/openapi/v3/api/v1": doc})
    secret = manifests.cloud_init_secret("vm-1", "ns", "r1", _cloud_init())
    assert core.validate(secret) == []
    assert core.validate(manifests.guest_service("vm-1", "ns", "r1")) == []
    for name in SHIPPED:
        for obj in _plan_documents(project_root / "scenarios" / name):
            if obj["kind"] in ("Secret", "Service", "Namespace"):
                assert core.validate(obj) == [], (name, obj["kind"])


def test_the_platform_validates_against_the_served_schema_and_sends_the_workloads(
        lab: tuple[SimKubeVirtLabHandle, Connection], tmp_path: Path) -> None:
    handle, _ = lab
    image = ImageConfig(DiskSource(container_disk=DISK), user="fedora", cloud_init=True)
    config = KubeVirtConfig(run_id="t-openapi", state_dir=tmp_path,
                            connect=ConnectOptions(str(handle.paths.kubeconfig(SUITE_KUBECONFIG)), qps=200, burst=200),
                            images={"cloud": image}, delete_timeout_s=30.0)
    p = KubeVirtPlatform.open(config)
    try:
        assert p.schemas().origin("kubevirt.io/v1") == f"cluster {KV_DOC}"
        bad = p.manifest_for(VMSpec(name="bad", image="cloud"))
        bad["spec"]["bogus"] = True
        with pytest.raises(PlatformError, match=rf"does not validate against cluster {KV_DOC}: "
                                                r"spec: Additional properties .*'bogus' was unexpected"):
            p._dry_run_once(VM, bad, p.namespace, "a broken VirtualMachine")
        vm = p.create_vm(VMSpec(name="cloudy", image="cloud"))
        p.wait_running(vm, 60)
        # the user-data went through a Secret (cloudInitNoCloud.secretRef) with the workloads in it
        volumes = p.kube.get(VM, "cloudy", p.namespace)["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
        assert {"name": "cloudinitdisk", "cloudInitNoCloud": {"secretRef": {"name": "cloudy-cloudinit"}}} in volumes
        secret = p.kube.core.read_namespaced_secret("cloudy-cloudinit", p.namespace)
        user_data = yaml.safe_load(base64.b64decode(secret.data["userdata"]))
        files = {f["path"]: f for f in user_data["write_files"]}
        assert set(files) == {memcheck.CLOUD_GUEST_PATH, "/usr/local/bin/vp-dirty", "/usr/local/bin/usleep"}
        assert "PRIVATE KEY" in user_data["ssh_keys"]["ed25519_private"]
    finally:
        cleanup.clean(p.kube, "t-openapi")
        p.close()


def _plan_documents(scenario: Path) -> list[dict[str, object]]:
    lines = open_lab(load_scenario(scenario).scenario, "plan-openapi").plan()
    docs: list[dict[str, object]] = []
    current: list[str] | None = None
    for line in lines:
        if current is None and line.endswith("<<'EOF'"):
            current = []
        elif current is not None and line == "EOF":
            docs += [d for d in yaml.safe_load_all("\n".join(current)) if d]
            current = None
        elif current is not None:
            current.append(line)
    return docs
