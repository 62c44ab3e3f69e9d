"""``KubeVirtLabHandle``: the ``kind``, ``kubeadm`` and ``existing`` labs behind ``virtproof.lab.factory``.

``up`` makes the cluster (kind/kubeadm; nothing for existing) and opens a ``KubeVirtPlatform``;
``attach`` only opens one; ``down`` deletes the objects labelled with this lab's run id and,
for kind without ``keep``, the cluster. The lab's state (kubeconfig of made clusters, the run's
SSH keys, its owner) lives in ``$VIRTPROOF_STATE/kubevirt/<lab-id>``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from virtproof.core.processes import Owner
from virtproof.core.statedir import state_root
from virtproof.lab.clusters.kind import KindCluster
from virtproof.lab.clusters.kubeadm import KubeadmCluster
from virtproof.lab.clusters.ssh import SSHError
from virtproof.lab.clusters.steps import StepFailed
from virtproof.lab.images.cloudinit import placeholder_files
from virtproof.lab.kubevirt import cleanup, manifests
from virtproof.lab.kubevirt.config import ImageConfig, KubeVirtConfig
from virtproof.lab.kubevirt.connect import ConnectOptions, KubeconfigError, connect
from virtproof.lab.kubevirt.features import STALL_DETECTION_GATE
from virtproof.lab.kubevirt.manifests import DiskSource, guest_service, namespace
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.kubevirt.resources import Kube
from virtproof.lab.kubevirt.storage import http_virtual_size, request_for
from virtproof.lab.platform import GuestAccess, PlatformError, VMSpec
from virtproof.scenarios.kubevirt import ExistingLab, KindLab, KubeadmLab
from virtproof.scenarios.model import Scenario

Progress = Callable[[str], None]
KubeLab = KindLab | KubeadmLab | ExistingLab


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (cloud-init userData) as literal blocks, readable in a plan."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _dump(obj: object) -> list[str]:
    return yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False).splitlines()


class ClusterLabError(RuntimeError):
    """The cluster could not be made or reached; the message says why (exit 3)."""


def lab_state_dir(lab_id: str) -> Path:
    return state_root() / "kubevirt" / lab_id


def _kvm_boots() -> bool:
    """Whether KVM boots a guest here (lab.qemu's probe boots the micro guest under KVM)."""
    from virtproof.lab.images.store import ImageStore
    from virtproof.lab.qemu.accel import choose_accel

    try:
        return choose_accel("auto", ImageStore.default().get("micro")).accel == "kvm"
    except (RuntimeError, OSError, LookupError):
        return False


def feature_gates_for(scenario: Scenario) -> tuple[str, ...]:
    """KubeVirt feature gates a lab enables because the scenario needs them, and no others: a
    migration downtime limit (maxDowntimeMs) needs MigrationStallDetection on v1.9."""
    migration = scenario.suites.migration
    if migration is not None and migration.policy.downtime_limit_ms:
        return (STALL_DETECTION_GATE,)
    return ()


class KubeVirtLabHandle:
    def __init__(self, scenario: Scenario, lab_id: str, persistent: bool = False,
                 kvm_boots: Callable[[], bool] = _kvm_boots) -> None:
        lab = scenario.lab
        if not isinstance(lab, KindLab | KubeadmLab | ExistingLab):
            raise TypeError(f"not a KubeVirt lab: {lab.kind}")
        self.spec: KubeLab = lab
        self.kind = lab.kind
        self.scenario = scenario
        self.lab_id = lab_id
        self.persistent = persistent
        self.state_dir = lab_state_dir(lab_id)
        self.cluster: KindCluster | KubeadmCluster | None = None
        gates = feature_gates_for(scenario)
        if isinstance(lab, KindLab):
            self.cluster = KindCluster(lab, self.state_dir, kvm_boots, gates)
        elif isinstance(lab, KubeadmLab):
            self.cluster = KubeadmCluster(lab, self.state_dir, gates)

    # configuration ----------------------------------------------------------------------
    def config(self) -> KubeVirtConfig:
        kubeconfig = self.cluster.kubeconfig if self.cluster is not None else self.spec.kubeconfig
        images = {}
        for name, src in self.spec.images.items():
            access = None
            if src.private_key and src.host_key:
                access = GuestAccess(src.user, Path(src.private_key).expanduser(), src.host_key)
            images[name] = ImageConfig(
                DiskSource(container_disk=src.container_disk, http_url=src.http, size=src.disk_size,
                           storage_class=src.storage_class),
                user=src.user, cloud_init=src.cloud_init, access=access)
        return KubeVirtConfig(
            run_id=self.lab_id, state_dir=self.state_dir,
            connect=ConnectOptions(str(kubeconfig) if kubeconfig else None, self.spec.context, self.spec.qps,
                                   self.spec.burst),
            namespace=self.spec.namespace, images=images, node_address=self.spec.node_address,
            guest_network_reachable=self.spec.guest_network_reachable, require_cdi=self.spec.require_cdi,
        )

    # LabHandle --------------------------------------------------------------------------
    def plan(self) -> list[str]:
        cfg = self.config()
        lines = self.cluster.plan() if self.cluster is not None else [
            f"# existing cluster: kubeconfig {cfg.connect.kubeconfig or '$KUBECONFIG or in-cluster'}, "
            f"context {cfg.connect.context or '(current)'}; nothing is installed"]
        ns = cfg.effective_namespace
        lines.append(f"# per run: preflight (KubeVirt/CDI Available, SelfSubjectAccessReviews), then in {ns}:")
        if not self.spec.namespace:
            lines.append("kubectl apply -f - <<'EOF'")
            lines += _dump(namespace(ns, self.lab_id)) + ["EOF"]
        guest = self.scenario.guest
        spec = VMSpec(name="<vm>", image=guest.image, cpus=guest.cpus, memory_mib=guest.memory)
        image = cfg.images.get(guest.image)
        cloud = None
        if image is not None and image.cloud_init:
            cloud = manifests.CloudInit(image.user, "<the run's ssh public key>", "<generated host key>",
                                        "<generated host public key>", files=placeholder_files())
        companions = "a Service, a cloud-init Secret and a VM" if cloud else "a Service and a VM"
        lines.append(f"# for each VM ({guest.image}, {guest.cpus} CPU, {guest.memory} MiB): {companions}")
        lines.append("kubectl apply -f - <<'EOF'")
        lines += _dump(guest_service("<vm>", ns, self.lab_id))
        lines.append("---")
        if image is None:
            lines.append(f"# image {guest.image!r} is not in lab.images: VMs cannot be created")
        else:
            if cloud is not None:
                lines += _dump(manifests.cloud_init_secret("<vm>", ns, self.lab_id, cloud))
                lines.append("---")
            source = image.source
            if source.http_url and source.size is None:
                try:
                    source = replace(source, size=request_for(http_virtual_size(source.http_url)))
                except PlatformError as exc:
                    lines.append(f"# the DataVolume's size comes from the image at run time ({exc})")
                    source = replace(source, size="<the image's virtual size + CDI overhead>")
            if source.http_url and not source.access_modes:
                lines.append("# access and volume mode: the StorageProfile's, else ReadWriteOnce and Filesystem "
                             "(at run time)")
            lines += _dump(manifests.virtual_machine(spec, ns, self.lab_id, source, cloud))
        lines.append("EOF")
        return lines

    def _write_owner(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "owner.json").write_text(json.dumps(
            {**Owner.current().as_dict(), "persistent": self.persistent}))

    def up(self, progress: Progress = lambda _: None) -> KubeVirtPlatform:
        self._write_owner()
        if self.cluster is not None:
            try:
                self.cluster.up(progress)
            except (StepFailed, SSHError, OSError) as exc:
                raise ClusterLabError(f"{self.kind} lab: {exc}") from None
        return self.attach()

    def attach(self) -> KubeVirtPlatform:
        try:
            return KubeVirtPlatform.open(self.config())
        except KubeconfigError as exc:
            raise ClusterLabError(str(exc)) from None
        except PlatformError as exc:
            raise ClusterLabError(str(exc)) from None
        except (ApiException, HTTPError, OSError) as exc:
            raise ClusterLabError(f"cannot reach the cluster: {_short(exc)}") from None

    def _kube(self) -> Kube:
        cfg = self.config()
        return Kube(connect(cfg.connect))

    def down(self) -> list[str]:
        removed: list[str] = []
        try:
            kube = self._kube()
            try:
                removed += cleanup.clean(kube, self.lab_id, self.spec.namespace)
            finally:
                kube.conn.close()
        except (KubeconfigError, ApiException, HTTPError, OSError) as exc:
            removed.append(f"(could not clean cluster objects: {_short(exc)})")
        if self.cluster is not None:
            removed += self.cluster.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return removed

    def status(self) -> list[str]:
        try:
            kube = self._kube()
        except KubeconfigError as exc:
            return [f"{self.kind} lab {self.lab_id}: {exc}"]
        try:
            found = cleanup.leftovers(kube, self.lab_id, self.spec.namespace)
        except (ApiException, HTTPError, OSError) as exc:
            return [f"{self.kind} lab {self.lab_id}: unreachable: {_short(exc)}"]
        finally:
            kube.conn.close()
        return [f"{self.kind} lab {self.lab_id}: {len(found)} object(s) labelled with its run id"] + [
            f"  {item}" for item in found]

    def clean_leftovers(self, all_runs: bool = False) -> list[str]:
        """Delete objects of runs whose owner on this host is gone (or of every run: ``all_runs``)."""
        kube = self._kube()
        try:
            runs = {item.run_id for item in cleanup.leftovers(kube, None, self.spec.namespace)}
            removed: list[str] = []
            for run_id in sorted(runs):
                if all_runs or _owner_gone(run_id):
                    removed += cleanup.clean(kube, run_id, self.spec.namespace)
            return removed
        finally:
            kube.conn.close()


def _owner_gone(run_id: str) -> bool:
    """A run whose state directory on this host says its owner process is gone."""
    try:
        owner = json.loads((lab_state_dir(run_id) / "owner.json").read_text())
    except (OSError, ValueError):
        return False  # not ours (another host's run, or an unknown one): leave it
    if not isinstance(owner, dict) or owner.get("persistent"):
        return False
    recorded = Owner.from_mapping(owner)
    return recorded is None or not recorded.alive()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
