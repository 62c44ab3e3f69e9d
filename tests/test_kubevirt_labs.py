"""The kind, kubeadm and existing labs: plans (nothing is run), the step runner locally, and the
scenario models' errors. The step runner over real SSH is in test_kubevirt_ssh.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from virtproof.lab.clusters.handle import ClusterLabError, KubeVirtLabHandle
from virtproof.lab.clusters.kind import kind_config
from virtproof.lab.clusters.steps import LocalExecutor, Step, StepFailed, run_steps
from virtproof.lab.factory import open_lab
from virtproof.lab.kubevirt import schema as kubevirt_schema
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
