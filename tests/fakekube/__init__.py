"""A fake Kubernetes cluster with KubeVirt and CDI for tests: ``FakeCluster``. Being retired.

The KubeVirt backend's own tests run on the real control plane (a sim-kubevirt lab:
``tests/test_kubevirt_backend.py``). What still uses this fake, and why:

- CDI disk import (``tests/test_kubevirt_backend_cdi.py``): CDI is not in the sim-kubevirt lab
  (the control-plane build has no CDI, and its importer is a pod that needs a container
  runtime), so only this fake fills DataVolumes.

Nothing else imports it: the end-to-end tests (``tests/test_kubevirt_e2e.py``) and
``benchmarks/bench_kubevirt.py`` run on a sim-kubevirt lab, and the fake's qemu guest runner
is gone with them. The fake goes when CDI joins the lab.

Faults of the real server once played here (422 from schemas and webhooks, 410 Gone, missing
permissions, KubeVirt not Available, a single node) are now produced by the real components.

The API server is real HTTP on 127.0.0.1 (the real ``kubernetes`` client talks to it); objects
are validated against the KubeVirt and CDI schemas bundled in ``lab/kubevirt/schemas``;
controllers advance them like KubeVirt and CDI; a ``GuestRunner`` plays virt-handler (``NoGuest``:
nothing runs); NodePorts are real listeners on 127.0.0.1 forwarding to the guest.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from virtproof.lab.kubevirt import schema as kubevirt_schema

from fakekube.controller import NODE, Controller
from fakekube.guests import GuestRunner, NoGuest
from fakekube.proxy import NodePortProxy
from fakekube.server import FakeApiServer
from fakekube.store import Store

KUBEVIRT_VERSION = "v1.9.0"
CDI_VERSION = "v1.66.0"


class FakeCluster:
    def __init__(self, nodes: int = 2, runner: GuestRunner | None = None, step_s: float = 0.02,
                 download_dir: Path | None = None, node_names: list[str] | None = None,
                 controllers: bool = True) -> None:
        kubevirt_schema.load_schemas()
        self.token = "vp-test-token-" + secrets.token_hex(16)
        self.store = Store()
        self.api = FakeApiServer(self.store, self.token)
        self.proxy = NodePortProxy()
        self.runner: GuestRunner = runner or NoGuest()
        self.controller = Controller(self.store, self.runner, self.proxy, step_s, download_dir)
        if not controllers:  # an API server only: objects stay as written (the watch benchmark)
            self.store.listeners.clear()
        self.api.port_allocator = self.proxy.allocate
        self.node_names = node_names or [f"node-{i}" for i in range(1, nodes + 1)]
        self._tmp = tempfile.TemporaryDirectory(prefix="vp-fakekube-")
        self.kubeconfig = Path(self._tmp.name) / "kubeconfig"
        self._seed()

    def _seed(self) -> None:
        for name in self.node_names:
            self.store.create(NODE, "", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                      "kubevirt.io/schedulable": "true"}},
                "spec": {},
                "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                         {"type": "Hostname", "address": name}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })
        kv_status: dict[str, Any] = {
            "phase": "Deployed",
            "observedKubeVirtVersion": KUBEVIRT_VERSION, "operatorVersion": KUBEVIRT_VERSION,
            "conditions": [{"type": "Available", "status": "True",
                            "reason": "AllComponentsReady", "message": "All components are ready."}],
        }
        configuration: dict[str, Any] = {"developerConfiguration": {"useEmulation": True}}
        kv = {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
              "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
              "spec": {"configuration": configuration}, "status": kv_status}
        self.api.check(_kind("kubevirts"), kv)
        self.store.create("kubevirt.io/v1/kubevirts", "kubevirt", kv)
        # CDI (Available): what this fake is still for
        cdi_obj = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDI", "metadata": {"name": "cdi"},
                   "spec": {}, "status": {"phase": "Deployed", "observedVersion": CDI_VERSION,
                                          "conditions": [{"type": "Available", "status": "True",
                                                          "lastTransitionTime": "2026-01-01T00:00:00Z",
                                                          "reason": "", "message": ""}]}}
        self.api.check(_kind("cdis"), cdi_obj)
        self.store.create("cdi.kubevirt.io/v1beta1/cdis", "", cdi_obj)
        self.store.create("v1/namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "default"}})
        # kind's default class: local-path, WaitForFirstConsumer. CDI v1.66 does not know its
        # provisioner (pkg/storagecapabilities), so the StorageProfile it makes has no claim
        # properties: a DataVolume must bring its own access modes.
        self.store.create("storage.k8s.io/v1/storageclasses", "", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"})
        profile = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
                   "metadata": {"name": "standard"}, "spec": {},
                   "status": {"storageClass": "standard", "provisioner": "rancher.io/local-path",
                              "claimPropertySets": []}}
        self.store.create("cdi.kubevirt.io/v1beta1/storageprofiles", "", profile)

    def write_kubeconfig(self) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.api.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        return self.kubeconfig

    def start(self) -> FakeCluster:
        self.api.start()
        self.controller.start()
        self.write_kubeconfig()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.api.stop()
        self.proxy.close()
        self.runner.close()
        self._tmp.cleanup()

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _kind(plural: str) -> Any:
    from fakekube.server import KINDS
    return next(k for k in KINDS if k.plural == plural)
