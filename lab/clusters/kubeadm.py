"""The ``kubeadm`` lab: a cluster on hosts from the scenario's inventory, over SSH (paramiko).

Steps per host (each idempotent through its check, logged, retried where transient): kernel
modules and sysctls, containerd, kubelet/kubeadm/kubectl from pkgs.k8s.io, ``kubeadm init`` on
the control plane, ``kubeadm join`` on workers, the CNI (flannel), then KubeVirt, CDI and
virtproof's RBAC. The admin kubeconfig is fetched into the lab's state directory.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from virtproof.core.secretfile import write_secret
from virtproof.lab.clusters.install import install_steps
from virtproof.lab.clusters.ssh import SSHExecutor
from virtproof.lab.clusters.steps import Executor, Step, StepLog, run_steps
from virtproof.scenarios.kubevirt import KubeadmHost, KubeadmLab

FLANNEL = "https://github.com/flannel-io/flannel/releases/download/v0.26.4/kube-flannel.yml"
LOCAL_PATH = "https://raw.githubusercontent.com/rancher/local-path-provisioner/v0.0.30/deploy/local-path-storage.yaml"
ADMIN = "/etc/kubernetes/admin.conf"
KUBECTL = f"kubectl --kubeconfig {ADMIN}"
JOIN_FILE = "/root/.virtproof-join"


def _host_id(host: KubeadmHost) -> str:
    return f"{host.address}:{host.port}"


def host_steps(host: KubeadmHost, version: str) -> list[Step]:
    h = _host_id(host)
    repo = f"https://pkgs.k8s.io/core:/stable:/v{version}/deb/"
    return [
        # Persistent across a reboot: the modules through modules-load.d, swap off in fstab too.
        Step("kernel-prereqs", "modprobe overlay && modprobe br_netfilter && mkdir -p /etc/modules-load.d && "
             "printf 'overlay\\nbr_netfilter\\n' > /etc/modules-load.d/90-virtproof-k8s.conf && "
             "printf 'net.bridge.bridge-nf-call-iptables=1\\nnet.ipv4.ip_forward=1\\n' "
             "> /etc/sysctl.d/90-virtproof-k8s.conf && sysctl --system >/dev/null && swapoff -a && "
             "sed -ri '/^[^#].*[[:space:]]swap[[:space:]]/s/^/#virtproof: /' /etc/fstab",
             check="test -f /etc/sysctl.d/90-virtproof-k8s.conf && test -f /etc/modules-load.d/90-virtproof-k8s.conf "
                   "&& lsmod | grep -q br_netfilter && ! grep -qE '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab "
                   "&& test -z \"$(swapon --show --noheadings)\"", host=h),
        Step("containerd", "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq containerd && "
             "mkdir -p /etc/containerd && containerd config default "
             "| sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml && "
             "systemctl restart containerd && systemctl enable containerd",
             check="systemctl is-active --quiet containerd && grep -q 'SystemdCgroup = true' "
                   "/etc/containerd/config.toml", retries=3, timeout_s=900, host=h),
        Step("kubeadm-packages",
             "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq apt-transport-https "
             "ca-certificates curl gpg && mkdir -p /etc/apt/keyrings && "
             f"curl -fsSL {repo}Release.key | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes.gpg && "
             f"echo 'deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] {repo} /' "
             "> /etc/apt/sources.list.d/kubernetes.list && apt-get update -q && "
             "DEBIAN_FRONTEND=noninteractive apt-get install -yq kubelet kubeadm kubectl && "
             "apt-mark hold kubelet kubeadm kubectl && systemctl enable --now kubelet",
             check=f"kubeadm version -o short 2>/dev/null | grep -q '^v{version}\\.'", retries=3,
             timeout_s=900, host=h),
    ]


def cluster_steps(spec: KubeadmLab, use_emulation: bool, feature_gates: tuple[str, ...] = ()) -> list[Step]:
    plane = next(h for h in spec.hosts if h.role == "control-plane")
    p = _host_id(plane)
    steps: list[Step] = []
    for host in spec.hosts:
        steps += host_steps(host, spec.kubernetes_version)
    steps.append(Step("kubeadm-init",
                      f"kubeadm init --pod-network-cidr={shlex.quote(spec.pod_cidr)} "
                      f"--apiserver-advertise-address={shlex.quote(plane.address)} --upload-certs",
                      check=f"test -f {ADMIN} && {KUBECTL} get --raw /readyz >/dev/null 2>&1",
                      timeout_s=900, host=p))
    steps.append(Step("cni-flannel", f"{KUBECTL} apply -f {FLANNEL}", retries=3, host=p,
                      check=f"{KUBECTL} -n kube-flannel get daemonset kube-flannel-ds >/dev/null 2>&1"))
    workers = [h for h in spec.hosts if h.role == "worker"]
    if workers:
        steps.append(Step("join-command", f"kubeadm token create --print-join-command > {JOIN_FILE}",
                          retries=2, host=p))
    else:
        steps.append(Step("untaint-control-plane",
                          f"{KUBECTL} taint nodes --all node-role.kubernetes.io/control-plane- || true", host=p))
    for worker in workers:
        steps.append(Step("kubeadm-join", f"<the kubeadm join command join-command wrote to {JOIN_FILE}>",
                          check="test -f /etc/kubernetes/kubelet.conf", retries=2, timeout_s=600,
                          host=_host_id(worker)))
    steps.append(Step("nodes-ready", f"{KUBECTL} wait nodes --all --for condition=Ready --timeout=10m",
                      retries=1, timeout_s=700, host=p))
    # kubeadm installs no storage class, and CDI imports need one: a pinned local-path provisioner,
    # made the default (its WaitForFirstConsumer binding is handled by the importer).
    steps.append(Step("storage-class",
                      f"{KUBECTL} apply -f {LOCAL_PATH} && {KUBECTL} patch storageclass local-path -p "
                      "'{\"metadata\":{\"annotations\":{\"storageclass.kubernetes.io/is-default-class\":\"true\"}}}'",
                      check=f"{KUBECTL} get storageclass local-path >/dev/null 2>&1", retries=3, host=p))
    steps += install_steps(KUBECTL, spec.kubevirt_version, spec.cdi_version, use_emulation, host=p,
                           feature_gates=feature_gates)
    return steps


def kvm_check_script() -> str:
    """On a host: exit 0 when /dev/kvm exists and the CPU has VMX or SVM."""
    return "test -c /dev/kvm && grep -qwE 'vmx|svm' /proc/cpuinfo"


class KubeadmCluster:
    def __init__(self, spec: KubeadmLab, state_dir: Path, feature_gates: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.feature_gates = feature_gates
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self._executors: dict[str, SSHExecutor] = {}

    def executor(self, host_id: str) -> Executor:
        if host_id not in self._executors:
            host = next(h for h in self.spec.hosts if _host_id(h) == host_id)
            self._executors[host_id] = SSHExecutor(host.address, host.user, Path(host.key).expanduser(), host.port,
                                                   host.host_key, self.state_dir / "known_hosts")
        return self._executors[host_id]

    def plan(self) -> list[str]:
        mode = {"on": "on", "off": "off", "auto": f"on unless every worker passes `{kvm_check_script()}`"}
        lines = [f"# kubeadm lab: {len(self.spec.hosts)} host(s), Kubernetes {self.spec.kubernetes_version}, "
                 f"KubeVirt {self.spec.kubevirt_version}, CDI {self.spec.cdi_version}, "
                 f"useEmulation: {mode[self.spec.emulation]}"]
        for step in cluster_steps(self.spec, self.spec.emulation != "off", self.feature_gates):
            lines.extend(step.describe())
        lines.append(f"# then: copy {ADMIN} from the control plane to {self.kubeconfig}")
        return lines

    def up(self, say: Callable[[str], None]) -> StepLog:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        plane = next(h for h in self.spec.hosts if h.role == "control-plane")
        use_emulation = self.spec.emulation == "on"
        if self.spec.emulation == "auto":
            use_emulation = not all(self.kvm_on(host, say) for host in self.runs_vms())
        steps = cluster_steps(self.spec, use_emulation, self.feature_gates)
        # the join step runs what the control plane printed
        pre = [s for s in steps if s.name != "kubeadm-join"]
        split = next(i for i, s in enumerate(pre) if s.name == "nodes-ready")
        log = run_steps(pre[:split], self.executor, say=say)
        joins = [s for s in steps if s.name == "kubeadm-join"]
        if joins:
            result = self.executor(_host_id(plane)).execute(f"cat {JOIN_FILE}", None, 30)
            command = result.output.strip()
            joins = [Step(s.name, command, check=s.check, retries=s.retries, timeout_s=s.timeout_s, host=s.host)
                     for s in joins]
            log.entries += run_steps(joins, self.executor, say=say).entries
        log.entries += run_steps(pre[split:], self.executor, say=say).entries
        result = self.executor(_host_id(plane)).execute(f"cat {shlex.quote(ADMIN)}", None, 30)
        if result.status != 0:
            raise RuntimeError(f"cannot read {ADMIN} on {plane.address}: {result.output[-300:]}")
        write_secret(self.kubeconfig, result.output.encode(), replace=True)
        return log

    def runs_vms(self) -> list[KubeadmHost]:
        """The hosts VMs run on: the workers (the control plane too when it is the only host)."""
        workers = [h for h in self.spec.hosts if h.role == "worker"]
        return workers or list(self.spec.hosts)

    def kvm_on(self, host: KubeadmHost, say: Callable[[str], None]) -> bool:
        """KVM usable on ``host`` (decided per host: VMs run on the workers, not the control plane).
        useEmulation is cluster-wide in KubeVirt, so one worker without KVM means emulation for all."""
        ok = self.executor(_host_id(host)).execute(kvm_check_script(), None, 30).status == 0
        say(f"{host.address}: KVM {'available' if ok else 'not available'}")
        return ok

    def down(self) -> list[str]:
        removed = []
        if not self.spec.keep:
            for host in self.spec.hosts:
                result = self.executor(_host_id(host)).execute("kubeadm reset -f", None, 300)
                if result.status == 0:
                    removed.append(f"kubeadm node {host.address}")
        for ex in self._executors.values():
            ex.close()
        return removed
