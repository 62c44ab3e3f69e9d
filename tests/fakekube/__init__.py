"""A fake Kubernetes cluster with KubeVirt and CDI for tests: ``FakeCluster``.

The API server is real HTTP on 127.0.0.1 (the real ``kubernetes`` client talks to it); objects
are validated against ``../shared/kubevirt`` schemas; controllers advance them like KubeVirt;
a ``GuestRunner`` plays virt-handler (nothing, or real qemu guests); NodePorts are real
listeners on 127.0.0.1 forwarding to the guest.
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
                 cdi: bool = True, allow_postcopy: bool = False, use_emulation: bool = True,
                 download_dir: Path | None = None, kubevirt_available: bool = True,
                 node_names: list[str] | None = None, controllers: bool = True) -> None:
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
        self.api.on_evict = self.controller.evict
        self.node_names = node_names or [f"node-{i}" for i in range(1, nodes + 1)]
        self._tmp = tempfile.TemporaryDirectory(prefix="vp-fakekube-")
        self.kubeconfig = Path(self._tmp.name) / "kubeconfig"
        self._seed(cdi, allow_postcopy, use_emulation, kubevirt_available)

    def _seed(self, cdi: bool, allow_postcopy: bool, use_emulation: bool, available: bool) -> None:
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
            "phase": "Deployed" if available else "Deploying",
            "observedKubeVirtVersion": KUBEVIRT_VERSION, "operatorVersion": KUBEVIRT_VERSION,
            "conditions": [{"type": "Available", "status": "True" if available else "False",
                            "reason": "AllComponentsReady", "message": "All components are ready."}],
        }
        configuration: dict[str, Any] = {"developerConfiguration": {"useEmulation": use_emulation}}
        if allow_postcopy:
            configuration["migrations"] = {"allowPostCopy": True}
        kv = {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
              "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
              "spec": {"configuration": configuration}, "status": kv_status}
        self.api.check(_kind("kubevirts"), kv)
        self.store.create("kubevirt.io/v1/kubevirts", "kubevirt", kv)
        if cdi:
            cdi_obj = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDI", "metadata": {"name": "cdi"},
                       "spec": {}, "status": {"phase": "Deployed", "observedVersion": CDI_VERSION,
                                              "conditions": [{"type": "Available", "status": "True",
                                                              "lastTransitionTime": "2026-01-01T00:00:00Z",
                                                              "reason": "", "message": ""}]}}
            self.api.check(_kind("cdis"), cdi_obj)
            self.store.create("cdi.kubevirt.io/v1beta1/cdis", "", cdi_obj)
        self.store.create("v1/namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "default"}})

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
