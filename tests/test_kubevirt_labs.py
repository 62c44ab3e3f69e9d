"""The kind, kubeadm and existing labs: plans (nothing is run), the step runner locally, and the
scenario models' errors. The step runner over real SSH is in test_kubevirt_ssh.py."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtproof.lab.clusters.handle import ClusterLabError, KubeVirtLabHandle
from virtproof.lab.clusters.kind import kind_config
from virtproof.lab.clusters.steps import LocalExecutor, Step, StepFailed, run_steps
from virtproof.lab.factory import open_lab
from virtproof.lab.images.cloudinit import workload_files
from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt import schema as kubevirt_schema
from virtproof.lab.kubevirt.importer import DiskServer
from virtproof.lab.kubevirt.keys import run_keys
from virtproof.lab.platform import VMSpec
from virtproof.scenarios.kubevirt import CDI_VERSION, KUBEVIRT_VERSION
from virtproof.scenarios.model import ScenarioError, load_scenario, parse_scenario

KIND = """name: k
lab:
  kind: kind
  workers: {nodes}
  emulation: {emulation}
  images: {{micro: {{container_disk: quay.io/containerdisks/fedora:41, user: fedora}}}}
guest: {{image: micro, memory: 1Gi}}
suites: {{boot: {{count: 1}}}}
"""


def _heredocs(lines: list[str]) -> list[str]:
    docs, current = [], None
    for line in lines:
        if current is None and line.endswith("<<'EOF'"):
            current = []
        elif current is not None and line == "EOF":
            docs.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return docs


@pytest.mark.parametrize(("emulation", "mount"), [("on", False), ("off", True)])
def test_kind_plan_lists_config_commands_and_valid_manifests(emulation: str, mount: bool) -> None:
    kubevirt_schema.load_schemas()
    scenario = parse_scenario(KIND.format(nodes=2, emulation=emulation))
    handle = open_lab(scenario, "plan-1")
    lines = handle.plan()
    text = "\n".join(lines)
    assert re.search(r"^kind create cluster --name virtproof --config - ", text, re.M)
    assert "kubevirt/releases/download/v1.9.0/kubevirt-operator.yaml" in text
    assert "containerized-data-importer/releases/download/v1.66.0/cdi-operator.yaml" in text
    assert "--for condition=Available" in text and "kind delete cluster --name virtproof" in text
    docs = [d for doc in _heredocs(lines) for d in yaml.safe_load_all(doc) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[:3] == ["Cluster", "KubeVirt", "CDI"]
    cluster = docs[0]
    assert [n["role"] for n in cluster["nodes"]] == ["control-plane", "worker", "worker"]
    assert all(("extraMounts" in n) == mount for n in cluster["nodes"])
    kv = docs[1]
    assert kubevirt_schema.validate("v1.KubeVirt", kv) == []
    assert kv["spec"]["configuration"]["developerConfiguration"]["useEmulation"] is (emulation == "on")
    assert kubevirt_schema.validate("v1beta1.CDI", docs[2]) == []
    for vm in (d for d in docs if d["kind"] == "VirtualMachine"):
        assert kubevirt_schema.validate("v1.VirtualMachine", vm) == []
    assert {"ClusterRole", "Service", "VirtualMachine", "Namespace"} <= set(kinds)


def test_kind_config_mounts_kvm_only_when_kvm_is_used() -> None:
    spec = parse_scenario(KIND.format(nodes=1, emulation="auto")).lab
    assert "extraMounts" not in kind_config(spec, mount_kvm=False)["nodes"][0]  # type: ignore[arg-type]
    assert kind_config(spec, mount_kvm=True)["nodes"][0]["extraMounts"][0]["hostPath"] == "/dev/kvm"  # type: ignore[arg-type]


def test_kind_auto_emulation_asks_the_kvm_probe(tmp_path: Path) -> None:
    from virtproof.lab.clusters.kind import decide_emulation

    spec = parse_scenario(KIND.format(nodes=1, emulation="auto")).lab
    assert decide_emulation(spec, lambda: False) is True  # type: ignore[arg-type]
    assert decide_emulation(parse_scenario(KIND.format(nodes=1, emulation="off")).lab, lambda: False) is False  # type: ignore[arg-type]


def test_kind_up_without_kind_binary_is_a_clear_lab_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path))
    handle = KubeVirtLabHandle(parse_scenario(KIND.format(nodes=1, emulation="on")), "nokind-1")
    try:
        with pytest.raises(RuntimeError, match="needs kind, kubectl"):
            handle.up()
    finally:
        handle.down()
    assert not (tmp_path / "kubevirt" / "nokind-1").exists()


def test_kubeadm_plan_orders_host_steps_init_join_cni_and_installs(project_root: Path) -> None:
    loaded = load_scenario(project_root / "scenarios/kubeadm-kubevirt.yaml")
    lines = open_lab(loaded.scenario, "plan-2").plan()
    steps = [re.match(r"# step (\S+) on (\S+)", line).groups() for line in lines  # type: ignore[union-attr]
             if line.startswith("# step ")]
    names = [s[0] for s in steps]
    assert names.count("containerd") == 3 and names.count("kubeadm-packages") == 3  # a plane, two workers
    assert names.count("kubeadm-join") == 2
    assert names.index("kubeadm-init") < names.index("cni-flannel") < names.index("kubeadm-join")
    assert names.index("kubeadm-join") < names.index("nodes-ready") < names.index("kubevirt-operator")
    assert ("kubeadm-join", "192.0.2.11:22") in steps and ("kubeadm-join", "192.0.2.12:22") in steps
    assert ("kubeadm-init", "192.0.2.10:22") in steps
    assert names[-1] == "virtproof-rbac"
    text = "\n".join(lines)
    assert "kubeadm init --pod-network-cidr=10.244.0.0/16 --apiserver-advertise-address=192.0.2.10" in text
    assert "pkgs.k8s.io/core:/stable:/v1.34/deb/" in text


def test_existing_plan_installs_nothing(project_root: Path) -> None:
    lines = open_lab(load_scenario(project_root / "scenarios/existing.yaml").scenario, "plan-3").plan()
    assert lines[0].startswith("# existing cluster") and "nothing is installed" in lines[0]
    assert not any(line.startswith(("kind ", "kubeadm ")) for line in lines)


def test_lab_plan_command_prints_the_plan(virtproof_cmd: list[str], project_root: Path) -> None:
    proc = subprocess.run([*virtproof_cmd, "lab", "plan", "scenarios/kind-kubevirt.yaml"], cwd=project_root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kind create cluster" in proc.stdout and "kind: KubeVirt" in proc.stdout


@pytest.mark.parametrize(("text", "where"), [
    ("lab: {kind: kubeadm, hosts: [{address: h, key: k}]}", "lab: needs exactly one host with role control-plane"),
    ("lab: {kind: existing, images: {micro: {user: u}}}", "lab.images.micro: needs exactly one of container_disk"),
    ("lab: {kind: existing, images: {m: {container_disk: x, cloud_init: false}}}", "needs private_key and host_key"),
    ("lab: {kind: kind, workers: 0}", "lab.workers: must be at least 1"),
    ("lab: {kind: kind, kubevirt_version: latest}", "lab.kubevirt_version: must match"),
    ("lab: {kind: existing, namespace: Bad_NS}", "lab.namespace: must match"),
])
def test_bad_kubevirt_lab_sections_are_one_line_errors(text: str, where: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(f"name: x\n{text}\nsuites: {{boot: {{count: 1}}}}\n", "s.yaml")
    assert str(err.value).startswith("s.yaml:2: ") and where in str(err.value), str(err.value)


def test_existing_lab_with_a_bad_kubeconfig_is_a_lab_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("users: [")
    scenario = parse_scenario(f"name: x\nlab: {{kind: existing, kubeconfig: {kubeconfig}}}\nsuites: {{boot: {{}}}}\n")
    with pytest.raises(ClusterLabError, match="unreadable kubeconfig"):
        KubeVirtLabHandle(scenario, "bad-1").attach()
    scenario = parse_scenario(f"name: x\nlab: {{kind: existing, kubeconfig: {tmp_path / 'none'}}}\n"
                              "suites: {boot: {}}\n")
    with pytest.raises(ClusterLabError, match="kubeconfig not found"):
        KubeVirtLabHandle(scenario, "bad-2").attach()


def test_step_runner_skips_done_steps_retries_transient_and_names_failures(tmp_path: Path) -> None:
    marker, counter = tmp_path / "done", tmp_path / "count"
    flaky = (f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
             f"[ $n -ge 1 ] && touch {marker}")
    steps = [Step("flaky", flaky, check=f"test -f {marker}", retries=2)]
    local = LocalExecutor()
    first = run_steps(steps, lambda _: local, backoff_s=0.01)
    assert first.entries == [("flaky", "retried 1")] and counter.read_text().strip() == "2"
    again = run_steps(steps, lambda _: local, backoff_s=0.01)
    assert again.entries == [("flaky", "skipped")] and counter.read_text().strip() == "2"
    with pytest.raises(StepFailed, match=r"step broken on local failed \(exit 3\): boom"):
        run_steps([Step("broken", "echo boom; exit 3", retries=1)], lambda _: local, backoff_s=0.01)
    with pytest.raises(StepFailed, match="check still fails"):
        run_steps([Step("lying", "true", check="false")], lambda _: local)
    out = run_steps([Step("stdin", f"cat > {tmp_path / 'm.yaml'}", stdin="kind: X\n")], lambda _: local)
    assert out.entries == [("stdin", "done")] and (tmp_path / "m.yaml").read_text() == "kind: X\n"


def test_a_kind_lab_has_two_schedulable_workers_by_default() -> None:
    spec = parse_scenario(KIND.replace("  workers: {nodes}\n", "").format(emulation="on")).lab
    assert [n["role"] for n in kind_config(spec, mount_kvm=False)["nodes"]] == [  # type: ignore[arg-type]
        "control-plane", "worker", "worker"]


def test_a_downtime_limit_enables_the_gate_v1_9_needs_and_nothing_else() -> None:
    base = KIND.format(nodes=2, emulation="on")
    plain = "\n".join(open_lab(parse_scenario(base), "plan-g1").plan())
    assert "featureGates: []" in plain
    migration = base.replace("suites: {boot: {count: 1}}",
                             "suites: {migration: {policy: {downtime_limit_ms: 50}}}")
    gated = "\n".join(open_lab(parse_scenario(migration), "plan-g2").plan())
    assert "- MigrationStallDetection" in gated


def test_kubeadm_prerequisites_survive_a_reboot() -> None:
    lines = "\n".join(open_lab(load_scenario(Path("scenarios/kubeadm-kubevirt.yaml")).scenario, "plan-3").plan())
    assert "/etc/modules-load.d/90-virtproof-k8s.conf" in lines
    assert "/etc/fstab" in lines and "swapoff -a" in lines


# -- the shipped scenarios against the release they pin (issue 12) ----------------------------
SHIPPED = ("kind-kubevirt.yaml", "kubeadm-kubevirt.yaml", "existing.yaml")


def _secret_checked(secret: dict[str, Any], schemas: kubevirt_schema.SchemaSet) -> dict[str, Any]:
    """A cloud-init Secret: its metadata fits ObjectMeta (core v1 Secret is in neither bundled
    document; test_kubevirt_openapi.py checks the whole object against a real server's), and its
    user-data is #cloud-config YAML with the workloads' files; returns the parsed user-data."""
    assert secret["apiVersion"] == "v1" and secret["type"] == "Opaque" and set(secret["stringData"]) == {"userdata"}
    assert schemas.validate("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta", secret["metadata"]) == []
    text = secret["stringData"]["userdata"]
    assert text.startswith("#cloud-config\n") and len(text.encode()) < 1024 * 1024  # a Secret's limit
    user_data: dict[str, Any] = yaml.safe_load(text)
    modes = {f["path"]: (f["permissions"], f["owner"]) for f in user_data["write_files"]}
    assert modes == {path: ("0755", "root:root") for path in
                     ("/usr/local/bin/vp-memcheck", "/usr/local/bin/vp-dirty", "/usr/local/bin/usleep")}
    return user_data


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_plans_validate_against_the_pinned_release(name: str, project_root: Path) -> None:
    loaded = load_scenario(project_root / "scenarios" / name)
    lab = loaded.scenario.lab
    pinned = getattr(lab, "kubevirt_version", KUBEVIRT_VERSION)
    assert pinned == KUBEVIRT_VERSION and getattr(lab, "cdi_version", CDI_VERSION) == CDI_VERSION
    schemas = kubevirt_schema.load_schemas(pinned, CDI_VERSION)
    handle = open_lab(loaded.scenario, "plan-shipped")
    docs = [d for doc in _heredocs(handle.plan()) for d in yaml.safe_load_all(doc) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    if name != "existing.yaml":  # what the kind and kubeadm labs install
        assert [kubevirt_schema.validate("v1.KubeVirt", kv) for kv in by_kind["KubeVirt"]] == [[]]
        assert [kubevirt_schema.validate("v1beta1.CDI", cdi) for cdi in by_kind["CDI"]] == [[]]
    [vm] = by_kind["VirtualMachine"]
    assert schemas.validate("v1.VirtualMachine", vm) == []
    [secret] = by_kind["Secret"]
    _secret_checked(secret, schemas)
    volume = next(v for v in vm["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)
    assert volume["cloudInitNoCloud"] == {"secretRef": {"name": secret["metadata"]["name"]}}  # never inline
    assert "PRIVATE KEY" not in yaml.safe_dump(vm)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_vms_the_suites_create_for_shipped_scenarios_validate(name: str, project_root: Path) -> None:
    """What the boot and migration suites send for the scenario's guest, with the real run keys
    and the real workload files (the plan elides the binary), against the pinned schemas."""
    scenario = load_scenario(project_root / "scenarios" / name).scenario
    handle = KubeVirtLabHandle(scenario, "suites-1")
    config = handle.config()
    guest = scenario.guest
    image = config.images[guest.image]
    schemas = kubevirt_schema.load_schemas()
    with tempfile.TemporaryDirectory() as tmp:
        keys = run_keys(Path(tmp))
    cloud = manifests.CloudInit(image.user, keys.client_public, keys.host_private_pem, keys.host_public,
                                files=workload_files())
    for node in (None, "node-2"):  # boot, and the migration suite's placed guest
        spec = VMSpec(name="migration-0-1", image=guest.image, cpus=guest.cpus, memory_mib=guest.memory, node=node)
        vm = manifests.virtual_machine(spec, config.effective_namespace, "suites-1", image.source, cloud)
        assert schemas.validate("v1.VirtualMachine", vm) == []
    user_data = _secret_checked(manifests.cloud_init_secret("migration-0-1", config.effective_namespace,
                                                            "suites-1", cloud), schemas)
    assert user_data["ssh_keys"]["ed25519_public"] == keys.host_public


def test_the_plan_sizes_an_http_image_from_its_header(tmp_path: Path) -> None:
    disk = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "5G"], check=True)
    server = DiskServer(disk, "127.0.0.1")
    try:
        text = KIND.format(nodes=2, emulation="on").replace(
            "micro: {container_disk: quay.io/containerdisks/fedora:41, user: fedora}",
            f'micro: {{http: "{server.url}", user: debian}}')
        docs = [d for doc in _heredocs(open_lab(parse_scenario(text), "plan-http").plan())
                for d in yaml.safe_load_all(doc) if d]
    finally:
        server.close()
    [vm] = [d for d in docs if d["kind"] == "VirtualMachine"]
    [template] = vm["spec"]["dataVolumeTemplates"]
    assert template["spec"]["storage"]["resources"]["requests"]["storage"] == "5530Mi"  # 5 GiB + 5.5 % + 128 MiB
    assert kubevirt_schema.validate("v1.VirtualMachine", vm) == []
