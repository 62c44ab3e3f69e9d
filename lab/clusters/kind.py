"""The ``kind`` lab: a kind cluster made from the scenario, with pinned KubeVirt and CDI.

``plan()`` lists the kind config and every command; ``up()`` runs them locally (needs the
``kind`` and ``kubectl`` binaries and a container engine); ``down()`` deletes the cluster
unless ``keep: true``.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from virtproof.lab.clusters.install import install_steps
from virtproof.lab.clusters.steps import LocalExecutor, Step, StepLog, run_steps
from virtproof.scenarios.kubevirt import KindLab

KVM = Path("/dev/kvm")


def kind_config(spec: KindLab, mount_kvm: bool) -> dict[str, Any]:
    def node(role: str) -> dict[str, Any]:
        n: dict[str, Any] = {"role": role, "image": spec.node_image}
        if mount_kvm:
            n["extraMounts"] = [{"hostPath": str(KVM), "containerPath": str(KVM)}]
        return n

    return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": spec.cluster_name,
            "nodes": [node("control-plane")] + [node("worker") for _ in range(spec.workers)]}


def decide_emulation(spec: KindLab, kvm_boots: Callable[[], bool]) -> bool:
    """True when KubeVirt must emulate: asked for, or (auto) KVM does not boot a guest here."""
    if spec.emulation != "auto":
        return spec.emulation == "on"
    return not (KVM.exists() and kvm_boots())


class KindCluster:
    def __init__(self, spec: KindLab, state_dir: Path, kvm_boots: Callable[[], bool],
                 feature_gates: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.feature_gates = feature_gates
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self.config_path = state_dir / "kind-config.yaml"
        self._kvm_boots = kvm_boots

    def steps(self, use_emulation: bool) -> list[Step]:
        config = yaml.safe_dump(kind_config(self.spec, mount_kvm=not use_emulation), sort_keys=False)
        kubeconfig = shlex.quote(str(self.kubeconfig))
        kubectl = f"kubectl --kubeconfig {kubeconfig}"
        name = shlex.quote(self.spec.cluster_name)
        return [
            Step("kind-create",
                 f"kind create cluster --name {name} --config - --kubeconfig {kubeconfig} --wait 5m",
                 stdin=config, retries=1, timeout_s=900,
                 check=f"kind get clusters 2>/dev/null | grep -qx {name} && test -s {kubeconfig}"),
            *install_steps(kubectl, self.spec.kubevirt_version, self.spec.cdi_version, use_emulation,
                           feature_gates=self.feature_gates),
        ]

    def plan(self) -> list[str]:
        mode = {"on": "on", "off": "off", "auto": "decided at up by booting a probe guest under KVM"}
        lines = [f"# kind lab: cluster {self.spec.cluster_name}, 1 control plane + {self.spec.workers} worker(s), "
                 f"KubeVirt {self.spec.kubevirt_version}, CDI {self.spec.cdi_version}, "
                 f"useEmulation: {mode[self.spec.emulation]}"]
        use_emulation = self.spec.emulation != "off"
        for step in self.steps(use_emulation):
            lines.extend(step.describe())
        if not self.spec.keep:
            lines.append(f"# at the end of the run: kind delete cluster --name {self.spec.cluster_name}")
        return lines

    def missing_tools(self) -> list[str]:
        return [t for t in ("kind", "kubectl") if shutil.which(t) is None]

    def up(self, say: Callable[[str], None]) -> StepLog:
        missing = self.missing_tools()
        if missing:
            raise RuntimeError(f"the kind lab needs {', '.join(missing)} on PATH (and Docker or podman)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        use_emulation = decide_emulation(self.spec, self._kvm_boots)
        say(f"kind: useEmulation {use_emulation}")
        local = LocalExecutor()
        return run_steps(self.steps(use_emulation), lambda _: local, say=say)

    def down(self) -> list[str]:
        if self.spec.keep or shutil.which("kind") is None:
            return []
        result = LocalExecutor().execute(f"kind delete cluster --name {shlex.quote(self.spec.cluster_name)}", None, 300)
        return [f"kind cluster {self.spec.cluster_name}"] if result.status == 0 else []
