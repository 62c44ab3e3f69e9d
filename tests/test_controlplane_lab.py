"""The sim-kubevirt lab's control plane against itself: real etcd, kube-apiserver (RBAC and
admission on), controller-manager, scheduler, virt-api and virt-controller, with two
network-namespace nodes of a qemu lab (no node agent: what is checked here is the control
plane's own work, up to a virt-launcher pod bound to a Node).

One lab for the module (it takes about a minute to come up); the last test takes it down and
checks nothing is left. A second, paper lab is brought up by a process that is then SIGKILLed,
and ``virtproof lab clean`` must remove it while leaving the module's live lab alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from virtproof.core.errors import EXIT_LAB, EXIT_OK, EXIT_USAGE
from virtproof.core.processes import pid_alive, process_cmdline
from virtproof.core.statedir import state_root
from virtproof.lab.controlplane.build import ControlPlaneBuild
from virtproof.lab.controlplane.components import LabPaths, lab_processes
from virtproof.lab.controlplane.lab import SUITE_KUBECONFIG, SimKubeVirtLabHandle, SimLabError
from virtproof.lab.controlplane.leftovers import COMPONENT_NAMES
from virtproof.lab.qemu.network import list_netns
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario

from controlplane_support import control_plane

pytestmark = [pytest.mark.slow, pytest.mark.netns]


@dataclass
class Lab:
    handle: SimKubeVirtLabHandle
    build: ControlPlaneBuild
    admin: client.ApiClient
    suite: client.ApiClient

    @property
    def paths(self) -> LabPaths:
        return self.handle.paths


def _api(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def _scenario(**lab: Any) -> Scenario:
    return Scenario.model_validate({"name": "cp-test", "lab": {"kind": "sim-kubevirt", **lab},
                                    "suites": {"boot": {}}})


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[Lab]:
    built = control_plane()
    handle = SimKubeVirtLabHandle(_scenario(nodes=2), f"cptest-{new_run_id()}", start_agent=False)
    try:
        platform = handle.up(lambda message: print(message, file=sys.stderr, flush=True))
        platform.close()
        admin, suite = _api(handle.paths.kubeconfig("admin")), _api(handle.paths.kubeconfig(SUITE_KUBECONFIG))
        yield Lab(handle, built, admin, suite)
        admin.close()  # type: ignore[no-untyped-call]
        suite.close()  # type: ignore[no-untyped-call]
    finally:
        handle.down()


def test_the_api_server_runs_with_rbac_and_admission(lab: Lab) -> None:
    pid = int(lab.paths.pidfile("kube-apiserver").read_text())
    cmdline = process_cmdline(pid)
    assert "--authorization-mode=Node,RBAC" in cmdline and "--enable-admission-plugins=NodeRestriction" in cmdline
    assert client.VersionApi(lab.admin).get_code().git_version == "v1.34.4"
    # RBAC: an anonymous request is authenticated as system:anonymous and refused
    ports = json.loads(lab.paths.ports_file.read_text())
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(lab.paths.pki.crt("ca")))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{ports['apiserver']}/api/v1/nodes", context=context, timeout=10)
    assert refused.value.code == 403
    # admission: the ServiceAccount plugin refuses a pod whose service account does not exist
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="no-such-sa"), spec=client.V1PodSpec(
        service_account_name="no-such-sa", containers=[client.V1Container(name="c", image="registry.invalid/x")]))
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(lab.admin).create_namespaced_pod("default", pod)
    assert denied.value.status == 403 and "service account" in json.loads(denied.value.body)["message"]


def test_kubevirts_own_crds_are_established(lab: Lab) -> None:
    crds = client.ApiextensionsV1Api(lab.admin).list_custom_resource_definition().items
    kubevirt = {c.metadata.name: c for c in crds if c.metadata and "kubevirt.io" in str(c.metadata.name)}
    generated = {c["metadata"]["name"] for c in lab.build.manifests("crds")}
    assert len(generated) == 20 and generated <= set(kubevirt)
    for name in generated:
        conditions = {c.type: c.status for c in kubevirt[name].status.conditions or []}
        assert conditions.get("Established") == "True", name
    kv = client.CustomObjectsApi(lab.admin).get_namespaced_custom_object("kubevirt.io", "v1", "kubevirt", "kubevirts",
                                                                         "kubevirt")
    assert kv["status"]["phase"] == "Deployed" and kv["status"]["observedKubeVirtVersion"] == "v1.9.0"


def _vm(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": {"kubevirt.io/vm": name}}, "spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "256Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                       "interfaces": [{"name": "default", "masquerade": {}}]}},
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "root", "containerDisk": {"image": "registry.invalid/virtproof/micro:latest"}}],
            }}, **spec}}


@pytest.fixture(scope="module")
def namespace(lab: Lab) -> str:
    name = "cptest"
    client.CoreV1Api(lab.admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_virt_apis_webhook_rejects_an_invalid_vm(lab: Lab, namespace: str) -> None:
    custom = client.CustomObjectsApi(lab.admin)
    bad = _vm("bad", running=True)  # running and runStrategy are mutually exclusive
    with pytest.raises(ApiException) as denied:
        custom.create_namespaced_custom_object("kubevirt.io", "v1", namespace, "virtualmachines", bad)
    assert denied.value.status == 422
    message = json.loads(denied.value.body)["message"]
    assert message.startswith('admission webhook "virtualmachine-validator.kubevirt.io" denied the request'), message
    assert "mutually exclusive" in message


def test_virt_controller_makes_a_vmi_and_a_launcher_pod_that_the_scheduler_binds(lab: Lab, namespace: str) -> None:
    custom, core = client.CustomObjectsApi(lab.admin), client.CoreV1Api(lab.admin)
    custom.create_namespaced_custom_object("kubevirt.io", "v1", namespace, "virtualmachines", _vm("vm0"))
    deadline = time.monotonic() + 180
    node = None
    while time.monotonic() < deadline:
        try:
            vmi = custom.get_namespaced_custom_object("kubevirt.io", "v1", namespace, "virtualmachineinstances", "vm0")
        except ApiException:
            time.sleep(0.5)
            continue
        pods = core.list_namespaced_pod(namespace, label_selector=f"kubevirt.io/created-by={vmi['metadata']['uid']}")
        bound = [p for p in pods.items if p.spec and p.spec.node_name]
        if bound:
            node = bound[0].spec.node_name
            assert bound[0].metadata.labels.get("kubevirt.io") == "virt-launcher"
            break
        time.sleep(0.5)
    assert node in {"node0", "node1"}, "no virt-launcher pod was bound to one of the lab's Nodes"


def test_nodes_carry_what_kubevirts_pods_need(lab: Lab) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(lab.admin).list_node().items}
    assert sorted(nodes) == ["node0", "node1"]
    qemu = json.loads((state_root() / "labs" / lab.handle.lab_id / "lab.json").read_text())
    addresses = {n["name"]: n["address"] for n in qemu["nodes"]}
    for name, node in nodes.items():
        assert not node.spec.taints
        assert node.metadata.labels["kubevirt.io/schedulable"] == "true"
        assert node.status.allocatable["ephemeral-storage"] == "100Gi"
        assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == addresses[name]
    for ns in (n["netns"] for n in qemu["nodes"]):
        assert ns in list_netns()


def test_the_suites_identity_is_least_privilege(lab: Lab) -> None:
    core = client.CoreV1Api(lab.suite)
    assert {n.metadata.name for n in core.list_node().items} == {"node0", "node1"}  # granted: get, list, patch
    with pytest.raises(ApiException) as refused:
        core.delete_node("node0")
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'User "system:serviceaccount:virtproof:virtproof" cannot delete resource "nodes"' in message
    with pytest.raises(ApiException) as crd:
        client.ApiextensionsV1Api(lab.suite).delete_custom_resource_definition("virtualmachines.kubevirt.io")
    assert crd.value.status == 403


def test_status_names_every_process(lab: Lab) -> None:
    text = "\n".join(lab.handle.status())
    for name in COMPONENT_NAMES:
        assert f"{name}: pid " in text, text
    assert "node agent: not running" in text


def test_plan_starts_nothing(lab: Lab) -> None:
    before = set(lab_processes(f"{state_root()}/controlplane/"))
    plan = SimKubeVirtLabHandle(_scenario(nodes=3), f"plan-{new_run_id()}").plan()
    text = "\n".join(plan)
    for name in COMPONENT_NAMES:
        assert str(lab.build.binary(name)) in text
    assert "--authorization-mode=Node,RBAC" in text and "-m virtproof.lab.simnodes --lab-dir" in text
    assert "apply CustomResourceDefinition virtualmachines.kubevirt.io" in text
    assert "ip netns add" in text
    assert set(lab_processes(f"{state_root()}/controlplane/")) == before


def test_a_port_in_use_is_one_line_and_leaves_nothing(lab: Lab, tmp_path: Path, virtproof_cmd: list[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump({"name": "cp-busy", "lab": {"kind": "sim-kubevirt", "paper": True, "nodes": 1,
                                                                  "apiserver_port": port},
                                        "suites": {"boot": {}}}))
        proc = subprocess.run([*virtproof_cmd, "lab", "up", str(path)], capture_output=True, text=True, timeout=300,
                              check=False)
    assert proc.returncode == EXIT_LAB, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"port 127.0.0.1:{port} (lab.apiserver_port) is in use" in proc.stderr.strip().splitlines()[-1]
    assert not [p for p in (state_root() / "controlplane").iterdir() if p.name.startswith("cp-busy")]


@pytest.mark.parametrize(("lab_fields", "message"), [
    ({"nodes": 0}, "lab.nodes: must be at least 1"),
    ({"nodes": 17}, "set paper: true for up to 1000 nodes"),
    ({"paper": True, "nodes": 1001}, "lab.nodes: must be at most 1000"),
    ({"kubernetes_version": "v1.35.1"}, "v1.35.1 is not a Kubernetes version virtproof builds (it builds v1.34.4)"),
    ({"kubevirt_version": "v1.8.4"}, "v1.8.4 is not a KubeVirt version virtproof builds"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, virtproof_cmd: list[str], lab_fields: dict[str, Any],
                                          message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "cp-bad", "lab": {"kind": "sim-kubevirt", **lab_fields},
                                    "suites": {"boot": {}}}))
    proc = subprocess.run([*virtproof_cmd, "lab", "up", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == EXIT_USAGE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


KILLED_OWNER = textwrap.dedent('''\
    import sys, time
    from pathlib import Path
    from virtproof.lab.factory import open_lab
    from virtproof.scenarios.model import load_scenario
    handle = open_lab(load_scenario(Path(sys.argv[1])).scenario, sys.argv[2])
    handle.up(lambda m: print(m, flush=True)).close()
    print("LAB-UP", flush=True)
    time.sleep(3600)
''')


def test_a_sigkilled_owners_lab_is_removed_by_lab_clean(lab: Lab, tmp_path: Path, virtproof_cmd: list[str]) -> None:
    """A paper lab with its node agent, made through the factory as ``virtproof run`` does."""
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump({"name": "cp-killed", "lab": {"kind": "sim-kubevirt", "paper": True, "nodes": 1},
                                    "suites": {"boot": {}}}))
    lab_id = f"cpkilled-{new_run_id()}"
    # The kubernetes client writes a kubeconfig's embedded key and certificates to temporary files
    # and removes them at exit (config/kube_config.py, atexit): a SIGKILLed owner cannot, so its
    # temporary directory is this test's, not /tmp.
    owner = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, str(path), lab_id], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert owner.stdout is not None
    seen = []
    deadline = time.monotonic() + 600
    for line in owner.stdout:
        seen.append(line)
        if line.startswith("LAB-UP") or time.monotonic() > deadline:
            break
    assert seen and seen[-1].startswith("LAB-UP"), "".join(seen[-30:])
    killed = LabPaths.for_lab(lab_id)
    left = lab_processes(killed.marker)
    assert len(left) == len(COMPONENT_NAMES) + 1  # and the node agent
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert all(pid_alive(pid) for pid in left)  # a SIGKILLed owner cannot clean up: the lab is left

    clean = subprocess.run([*virtproof_cmd, "lab", "clean"], capture_output=True, text=True, timeout=300,
                           check=False)
    assert clean.returncode == EXIT_OK, clean.stderr
    assert f"dir {killed.root}" in clean.stdout
    assert not lab_processes(killed.marker) and not killed.root.exists()
    assert not any(pid_alive(pid) for pid in left)
    # the module's lab has a live owner (this process): untouched
    assert all(f"{name}: pid " in "\n".join(lab.handle.status()) for name in COMPONENT_NAMES)


def test_sigterm_during_lab_up_removes_what_was_made(lab: Lab, tmp_path: Path, virtproof_cmd: list[str]) -> None:
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump({"name": "cp-term", "lab": {"kind": "sim-kubevirt", "paper": True, "nodes": 1},
                                    "suites": {"boot": {}}}))
    root = state_root() / "controlplane"
    before = {p.name for p in root.iterdir()}
    proc = subprocess.Popen([*virtproof_cmd, "lab", "up", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    made: Path | None = None
    deadline = time.monotonic() + 300
    while made is None and time.monotonic() < deadline:  # until its kube-apiserver runs
        for p in root.iterdir():
            if p.name.startswith("cp-term") and p.name not in before and (p / "pids" / "kube-apiserver.pid").exists():
                made = p
        time.sleep(0.2)
    assert made is not None, "the lab never got to start kube-apiserver"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted by signal 15" in err
    assert not made.exists() and not lab_processes(f"{made}/")
    status = subprocess.run([*virtproof_cmd, "lab", "status", str(path)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert "no lab is up for cp-term" in status.stdout


def test_down_leaves_no_process_namespace_or_state(lab: Lab) -> None:
    lab_id, marker = lab.handle.lab_id, lab.paths.marker
    pids = lab_processes(marker)
    assert len(pids) == len(COMPONENT_NAMES)
    # virt-api's temporary certificate directory (never removed by virt-api) is in the lab's
    # directory, which goes below, not in /tmp where it would outlive the lab
    assert list((lab.paths.root / "tmp").glob("certsdir*"))
    removed = lab.handle.down()
    assert any(r.startswith("kube-apiserver ") for r in removed)
    assert not lab_processes(marker) and not any(pid_alive(p) for p in pids)
    assert not [ns for ns in list_netns() if ns.startswith(f"vp-{lab_id}-")]
    for directory in (lab.paths.root, state_root() / "labs" / lab_id, state_root() / "kubevirt" / lab_id):
        assert not directory.exists(), directory
    with pytest.raises(SimLabError, match="is not up"):
        lab.handle.attach()
