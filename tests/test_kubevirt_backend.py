"""The KubeVirt backend against the fake API server, through the real kubernetes client:
boot timelines from watch events, migration, cancel, evacuation, preflight, cleanup, imports."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt import cleanup
from virtproof.lab.kubevirt.config import ImageConfig
from virtproof.lab.kubevirt.importer import import_disk
from virtproof.lab.kubevirt.manifests import DiskSource, virtual_machine
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.kubevirt.preflight import ClusterNotReady, PermissionsMissing
from virtproof.lab.kubevirt.resources import VM, VMIM
from virtproof.lab.platform import Capability, CapabilityMissing, MigrationPolicy, PlatformError, VMSpec

from fakekube import FakeCluster
from fakekube.fixtures import open_platform
from fakekube.guests import SlowGuest


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as c:
        yield c


@pytest.fixture
def platform(cluster: FakeCluster, tmp_path: Path) -> Iterator[KubeVirtPlatform]:
    p = open_platform(cluster, tmp_path)
    yield p
    cleanup.clean(p.kube, "t1")
    p.close()


def test_boot_timeline_comes_from_watch_events_in_kubevirt_phase_order(
        platform: KubeVirtPlatform, cluster: FakeCluster) -> None:
    vm = platform.create_vm(VMSpec(name="boot-1", memory_mib=256))
    running = platform.wait_running(vm, 20)
    assert running.name == "running" and running.source == "platform"
    names = ["created", "vmi_pending", "vmi_scheduling", "vmi_scheduled", "running", "vmi_ready"]
    events = {name: vm.timeline.get(name) for name in names}
    assert all(events.values()), vm.timeline.events
    stamps = [events[n].timestamp for n in names[1:]]  # type: ignore[union-attr]
    assert stamps == sorted(stamps)
    assert vm.node in cluster.node_names
    ep = vm.ssh_endpoint()
    assert ep.host == "127.0.0.1" and ep.port in cluster.proxy.listeners
    platform.recorder.wait_for(lambda: vm.timeline.get("vm_ready") is not None, 5)
    quantiles = {q.quantile_name: q for q in platform.latency_quantiles()}
    for name in ("VMICreated", "VMIPending", "VMIScheduling", "VMIScheduled", "VMIRunning", "VMReady"):
        assert name in quantiles and quantiles[name].count == 1
    assert quantiles["VMIScheduled"].p99 >= quantiles["VMIPending"].p99 >= 0
    latencies = platform.vm_latencies()
    assert set(latencies) == {"boot-1"} and len(latencies["boot-1"]) >= 6
    assert int(latencies["boot-1"]["VMIRunning"]) == quantiles["VMIRunning"].p50  # whole ms, like kube-burner
    platform.delete_vm(vm)
    assert vm.record.vmi_deleted
    platform.delete_vm(vm)  # idempotent


def test_fake_server_rejects_invalid_objects_with_422(platform: KubeVirtPlatform, cluster: FakeCluster) -> None:
    body = virtual_machine(VMSpec(name="bad"), platform.namespace, "t1",
                           DiskSource(container_disk="x"), None)
    body["spec"]["template"]["spec"]["domain"]["resources"]["cpu"] = {"cores": 1}
    with pytest.raises(ApiException) as err:
        platform.kube.create(VM, body, platform.namespace)
    assert err.value.status == 422 and "'cpu' was unexpected" in str(err.value.body)
    assert cluster.api.rejected


def test_unconfigured_image_and_unsupported_bus_are_clear_errors(platform: KubeVirtPlatform) -> None:
    with pytest.raises(PlatformError, match="image 'windows' is not configured"):
        platform.create_vm(VMSpec(name="w", image="windows"))
    with pytest.raises(PlatformError, match="no ide disk bus"):
        platform.create_vm(VMSpec(name="i", disk_bus="ide"))


def test_migration_records_vmim_phases_and_migration_state(platform: KubeVirtPlatform) -> None:
    vm = platform.create_vm(VMSpec(name="mig-1"))
    platform.wait_running(vm, 20)
    source = vm.node
    target = next(n for n in platform.nodes() if n != source)
    result = platform.migrate(vm, target, MigrationPolicy())
    assert result.ok and result.source == source and result.target == target, result
    assert result.time_source == "platform" and result.mode == "precopy"
    assert result.finished >= result.started and result.setup_s is not None and result.setup_s >= 0
    assert vm.node == target
    phases = platform.recorder.migrations["mig-1-mig-1"].phases
    assert list(phases) == ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady",
                            "Running", "Succeeded"]
    assert sorted(phases.values()) == list(phases.values())
    with pytest.raises(PlatformError, match="already runs"):
        platform.migrate(vm, target, MigrationPolicy())


def test_postcopy_goes_through_a_labelled_migration_policy(platform: KubeVirtPlatform, cluster: FakeCluster) -> None:
    vm = platform.create_vm(VMSpec(name="pc-1"))
    platform.wait_running(vm, 20)
    target = next(n for n in platform.nodes() if n != vm.node)
    result = platform.migrate(vm, target, MigrationPolicy(mode="postcopy", bandwidth_mibps=64))
    assert result.ok and result.mode == "postcopy"
    from virtproof.lab.kubevirt.resources import MIGRATION_POLICY

    policies = platform.kube.list_objects(MIGRATION_POLICY)
    assert [p["spec"].get("allowPostCopy") for p in policies] == [True]
    assert vm.record.migration_state.get("migrationPolicyName") == policies[0]["metadata"]["name"]


def test_timed_out_migration_is_cancelled_by_deleting_it(tmp_path: Path) -> None:
    with FakeCluster(runner=SlowGuest(migrate_s=30)) as cluster:
        p = open_platform(cluster, tmp_path)
        try:
            vm = p.create_vm(VMSpec(name="slow-1"))
            p.wait_running(vm, 20)
            target = next(n for n in p.nodes() if n != vm.node)
            started = time.monotonic()
            result = p.migrate(vm, target, MigrationPolicy(timeout_s=1.0))
            assert time.monotonic() - started < 25
            assert not result.ok and "cancelled" in (result.error or "") and "Succeeded" in (result.error or "")
            assert vm.record.migration_state["abortStatus"] == "Succeeded"
            assert vm.node != target
            assert p.kube.get(VMIM, "slow-1-mig-1", p.namespace) is None
        finally:
            cleanup.clean(p.kube, "t1")
            p.close()


def test_evacuate_cordons_evicts_and_kubevirt_migrates(platform: KubeVirtPlatform, cluster: FakeCluster) -> None:
    vms = [platform.create_vm(VMSpec(name=f"ev-{i}", node="node-1")) for i in range(2)]
    for vm in vms:
        platform.wait_running(vm, 20)
    results = platform.evacuate("node-1", timeout=20)
    assert len(results) == 2 and all(r.ok for r in results), results
    assert all(vm.node == "node-2" for vm in vms)
    node = platform.kube.core.read_node("node-1")
    assert not node.spec.unschedulable  # uncordoned again
    assert not platform.cordoned


def test_missing_permissions_are_one_error_listing_all(cluster: FakeCluster, tmp_path: Path) -> None:
    denied = {("delete", "virtualmachines"), ("watch", "virtualmachineinstances"), ("list", "nodes")}
    cluster.api.access = lambda a: (a.get("verb"), a.get("resource")) not in denied
    with pytest.raises(PermissionsMissing) as err:
        open_platform(cluster, tmp_path)
    text = str(err.value)
    assert text.startswith("missing 3 permission(s)")
    assert "delete virtualmachines.kubevirt.io in namespace virtproof-t1" in text
    assert "watch virtualmachineinstances.kubevirt.io" in text and "list nodes (cluster-wide)" in text


def test_optional_permissions_only_remove_capabilities(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.api.access = lambda a: a.get("resource") not in ("migrationpolicies", "datavolumes") \
        and a.get("subresource") != "eviction"
    p = open_platform(cluster, tmp_path)
    try:
        assert Capability.LIVE_MIGRATION in p.capabilities
        for cap in (Capability.POST_COPY, Capability.NODE_DRAIN, Capability.DISK_IMPORT,
                    Capability.MIGRATION_BANDWIDTH_LIMIT):
            assert cap not in p.capabilities
        with pytest.raises(CapabilityMissing, match="post_copy"):
            p.migrate(p.create_vm(VMSpec(name="x")), "node-2", MigrationPolicy(mode="postcopy"))
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()


def test_cluster_allow_post_copy_is_read_from_the_kubevirt_cr(tmp_path: Path) -> None:
    with FakeCluster(allow_postcopy=True) as cluster:
        cluster.api.access = lambda a: a.get("resource") != "migrationpolicies"
        p = open_platform(cluster, tmp_path)
        try:
            assert Capability.POST_COPY in p.capabilities
            assert Capability.MIGRATION_BANDWIDTH_LIMIT not in p.capabilities
            assert p.accel == "tcg" and p.versions()["kubevirt"] == "v1.9.0"
        finally:
            p.close()


def test_kubevirt_not_available_or_cdi_missing_is_a_clear_error(tmp_path: Path) -> None:
    with FakeCluster(kubevirt_available=False) as cluster, pytest.raises(ClusterNotReady, match="not Available"):
        open_platform(cluster, tmp_path)
    with FakeCluster(cdi=False) as cluster:
        with pytest.raises(ClusterNotReady, match="CDI"):
            open_platform(cluster, tmp_path, require_cdi=True)
        p = open_platform(cluster, tmp_path)
        assert Capability.DISK_IMPORT not in p.capabilities and "cdi" not in p.versions()
        p.close()


def test_single_node_cluster_has_no_live_migration(tmp_path: Path) -> None:
    with FakeCluster(nodes=1) as cluster:
        p = open_platform(cluster, tmp_path)
        assert Capability.LIVE_MIGRATION not in p.capabilities and Capability.BOOT in p.capabilities
        p.close()


def test_cleanup_deletes_only_objects_labelled_with_the_run(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.store.create("v1/namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": "shared"}})
    a = open_platform(cluster, tmp_path / "a", run_id="run-a", namespace="shared")
    b = open_platform(cluster, tmp_path / "b", run_id="run-b", namespace="shared")
    try:
        for p in (a, b):
            p.wait_running(p.create_vm(VMSpec(name=f"vm-{p.config.run_id}")), 20)
        foreign = virtual_machine(VMSpec(name="not-ours"), "shared", "x", DiskSource(container_disk="x"), None)
        del foreign["metadata"]["labels"]["virtproof.io/run-id"]
        a.kube.create(VM, foreign, "shared")
        deleted = cleanup.clean(a.kube, "run-a")
        assert any("vm-run-a" in d for d in deleted) and not any("run-b" in d for d in deleted)
        names = {o["metadata"]["name"] for o in a.kube.list_objects(VM, "shared")}
        assert names == {"not-ours", "vm-run-b"}
        assert cluster.store.exists("v1/namespaces", "", "shared")  # not ours: never deleted
        assert {str(x) for x in cleanup.leftovers(a.kube, "run-a")} == set()
    finally:
        cleanup.clean(b.kube, "run-b")
        a.close()
        b.close()


def test_run_namespace_is_created_labelled_and_removed_by_cleanup(platform: KubeVirtPlatform,
                                                                  cluster: FakeCluster) -> None:
    ns = cluster.store.get("v1/namespaces", "", "virtproof-t1")
    assert ns["metadata"]["labels"] == {"virtproof.io/run-id": "t1"}
    assert platform.created_namespace
    assert "Namespace virtproof-t1 (run t1)" in cleanup.clean(platform.kube, "t1")


def test_named_namespace_must_exist(cluster: FakeCluster, tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="'absent' named by the scenario does not exist"):
        open_platform(cluster, tmp_path, namespace="absent")


def test_disk_import_serves_the_file_and_cdi_downloads_it(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.controller.download_dir = tmp_path
    p = open_platform(cluster, tmp_path / "state")
    disk = tmp_path / "converted.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)  # a real image
    try:
        result = import_disk(p, disk, "probe", advertise="127.0.0.1", bind_address="127.0.0.1", timeout=30)
        assert result.phase == "Succeeded" and result.progress == "100.0%"
        assert (tmp_path / f"{p.namespace}-probe.img").read_bytes() == disk.read_bytes()
        image = p.import_disk(disk, "imported", advertise="127.0.0.1", timeout=30)
        vm = p.create_vm(VMSpec(name="from-dv", image=image))
        p.wait_running(vm, 20)
        vols = cluster.store.get("kubevirt.io/v1/virtualmachineinstances", p.namespace, "from-dv")["spec"]["volumes"]
        assert vols[0] == {"name": "rootdisk", "dataVolume": {"name": "imported"}}
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()


def test_http_image_goes_through_a_data_volume_template(cluster: FakeCluster, tmp_path: Path) -> None:
    from virtproof.lab.kubevirt.importer import DiskServer

    disk = tmp_path / "d.img"
    disk.write_bytes(b"x" * 100_000)
    server = DiskServer(disk, "127.0.0.1")
    image = ImageConfig(DiskSource(http_url=server.url, size="1Gi"), user="fedora")
    p = open_platform(cluster, tmp_path / "s", images={"micro": image})
    try:
        vm = p.create_vm(VMSpec(name="dvt"))
        p.wait_running(vm, 20)
        dv = cluster.store.get("cdi.kubevirt.io/v1beta1/datavolumes", p.namespace, "dvt-root")
        assert dv["status"]["phase"] == "Succeeded"
        assert vm.timeline.get("vm_provisioning") is not None
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        server.close()


def test_secrets_never_reach_logs_or_errors(cluster: FakeCluster, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    p = open_platform(cluster, tmp_path)
    try:
        logging.getLogger("virtproof.lab.kubevirt").warning("token is %s", cluster.token)
        logging.getLogger("urllib3").debug("Authorization: Bearer %s", cluster.token)
        vm = p.create_vm(VMSpec(name="sec-1"))
        p.wait_running(vm, 20)
        assert p.redact(f"x {cluster.token} y") == "x <redacted> y"
        host_key = p.keys().host_private_pem
        logging.getLogger("virtproof.lab.kubevirt").info("%s", host_key)
    finally:
        cleanup.clean(p.kube, "t1")
        p.close()
        p.conn.redactor.uninstall()
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert cluster.token not in text and "<redacted>" in text
    assert "OPENSSH PRIVATE KEY" not in text


def test_lab_clean_removes_only_runs_whose_local_owner_is_gone(cluster: FakeCluster, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import os

    from virtproof.core.processes import boot_id
    from virtproof.lab.clusters.leftovers import leftovers_cleaner

    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    owners = {"dead-run": 2**22 + 12345, "live-run": os.getpid()}
    platforms = []
    for run_id in ("dead-run", "live-run", "foreign-run"):
        p = open_platform(cluster, tmp_path / run_id, run_id=run_id)
        p.create_vm(VMSpec(name=f"vm-{run_id}"))
        platforms.append(p)
        if run_id in owners:
            state = tmp_path / "state" / "kubevirt" / run_id
            state.mkdir(parents=True)
            (state / "owner.json").write_text(json.dumps({"pid": owners[run_id], "boot_id": boot_id()}))
    try:
        removed = leftovers_cleaner()
        assert removed and all("(run dead-run)" in line for line in removed), removed
        left = {item.run_id for item in cleanup.leftovers(platforms[0].kube)}
        assert left == {"live-run", "foreign-run"}
    finally:
        for p in platforms:
            cleanup.clean(p.kube, p.config.run_id)
            p.close()


def test_informer_relists_after_410_gone_and_keeps_recording(cluster: FakeCluster, tmp_path: Path) -> None:
    from collections import deque

    from virtproof.lab.kubevirt.informer import Informer
    from virtproof.lab.kubevirt.resources import VMI as VMI_RES
    from virtproof.lab.kubevirt.resources import Kube

    p = open_platform(cluster, tmp_path)
    seen: list[tuple[str, str]] = []
    kube = Kube(p.conn)
    informer = Informer(kube, VMI_RES, p.namespace, p.selector,
                        lambda kind, obj, _: seen.append((kind, obj["metadata"]["name"])), idle_timeout_s=0.3)
    try:
        informer.start()
        informer.synced.wait(10)
        p.wait_running(p.create_vm(VMSpec(name="gone-1")), 20)
        cluster.store.history = deque(maxlen=5)  # the server forgets: the next watch gets 410 Gone
        for i in range(10):
            cluster.store.create("v1/configmaps", "x", {"metadata": {"name": f"c{i}"}})
        informer._interrupt()  # drop the current watch: it resumes from an expired resourceVersion
        p.wait_running(p.create_vm(VMSpec(name="gone-2")), 20)
        assert p.recorder.wait_for(lambda: ("ADDED", "gone-2") in seen or ("SYNC", "gone-2") in seen, 10)
        assert ("SYNC", "gone-1") in seen  # relisted after 410
        assert informer.error is None
    finally:
        informer.stop()
        cleanup.clean(p.kube, "t1")
        p.close()


def test_kubeconfig_keys_passwords_and_provider_tokens_are_redacted(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import base64

    import yaml

    from virtproof.lab.kubevirt.connect import ConnectOptions, connect

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


def test_nodes_are_the_ones_kubevirt_schedules_on(platform: KubeVirtPlatform, cluster: FakeCluster) -> None:
    cluster.store.create("v1/nodes", "", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "control-plane", "labels": {"kubevirt.io/schedulable": "true"}},
        "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}})
    cluster.store.create("v1/nodes", "", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "no-handler", "labels": {"kubevirt.io/schedulable": "false"}}, "spec": {}})
    assert list(platform.nodes()) == ["node-1", "node-2"]
    assert platform.node_address("node-2") == "127.0.0.1"
