"""What virt-operator, kubeadm and the kubelets would have put into the cluster, applied with the
Python kubernetes client (server-side apply; no kubectl).

In this order (the spike's findings in brackets):

1. Namespace ``kubevirt``, ConfigMap ``kubevirt/kubevirt-ca`` (virt-api's CA manager reads it) and
   the Secrets virt-operator keeps (the processes read their certificates from files).
2. KubeVirt's 20 CRDs from its own generator, waited for until Established.
3. KubeVirt's RBAC from its own generator (ServiceAccounts, roles, bindings).
4. The KubeVirt CR and its ``/status`` as virt-operator writes it [virt-config ignores a CR
   whose ``status.phase`` is empty, and takes the default architecture from the status: without
   it virt-api denies every VMI with "unsupported architecture"].
5. N Node objects with the labels virt-handler's node labeller sets, capacity including
   ``ephemeral-storage`` and KubeVirt's device resources, Ready, an InternalIP, and no taints
   [the TaintNodesByCondition admission adds ``not-ready`` on create; only the node-lifecycle
   controller, disabled here, would take it off].
6. ``deploy/rbac/virtproof-clusterrole.yaml`` and a kubeconfig with a token of its
   ServiceAccount: the least-privilege identity the suites run as.
7. Once virt-api serves: its webhooks with ``service`` rewritten to ``url: https://127.0.0.1:PORT``,
   and its APIServices behind a Service of type ExternalName (an APIService has no ``url:``;
   the aggregator resolves an ExternalName to ``name:port`` and verifies virt-api.kubevirt.svc).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from virtproof.lab.controlplane.build import KUBEVIRT_NAMESPACE, ControlPlaneBuild
from virtproof.lab.controlplane.pki import Pki

Obj = dict[str, Any]
Progress = Callable[[str], None]
FIELD_MANAGER = "virtproof-lab"
SUITE_NAMESPACE = "virtproof"  # of deploy/rbac/virtproof-clusterrole.yaml's ServiceAccount
SUITE_SERVICE_ACCOUNT = "virtproof"
SUITE_TOKEN_SECONDS = 365 * 24 * 3600
REGISTRY = "registry.invalid/kubevirt"  # nothing is ever pulled
CPU_MODEL = "Skylake-Client-IBRS"
MACHINE_TYPE = "pc-q35-rhel9.6.0"  # what the node agent reports as a VMI's status.machine.type

# kind -> (API path prefix, plural, namespaced)
_KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Node": ("/api/v1", "nodes", False),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ValidatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1", "validatingwebhookconfigurations",
                                       False),
    "MutatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations",
                                     False),
    "APIService": ("/apis/apiregistration.k8s.io/v1", "apiservices", False),
    "KubeVirt": ("/apis/kubevirt.io/v1", "kubevirts", True),
}


class BootstrapError(RuntimeError):
    """An object could not be applied or did not become ready; the message says which and why."""


def object_path(obj: Obj) -> str:
    kind = obj.get("kind", "")
    try:
        prefix, plural, namespaced = _KINDS[kind]
    except KeyError:
        raise BootstrapError(f"cannot apply kind {kind!r}") from None
    meta = obj.get("metadata") or {}
    api_version = obj.get("apiVersion", "")
    if not prefix.endswith(api_version):
        raise BootstrapError(f"{kind} {meta.get('name')}: apiVersion {api_version} is not {prefix}")
    ns = f"/namespaces/{meta.get('namespace') or 'default'}" if namespaced else ""
    return f"{prefix}{ns}/{plural}/{meta['name']}"


def describe(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{meta.get('name')}"


class ApiFailure(Exception):
    """A non-2xx answer (or no answer) from the lab's API server."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"{status} {reason}")

    @property
    def message(self) -> str:
        try:
            return str(json.loads(self.body or "{}").get("message") or self.reason)
        except (ValueError, AttributeError):
            return self.reason


def _call(api: client.ApiClient, method: str, path: str, body: object = None,
          content_type: str = "application/json", query: Sequence[tuple[str, str]] = ()) -> Obj:
    headers = {"Accept": "application/json", "Content-Type": content_type}
    _, url, headers, _, _ = api.param_serialize(method, path, query_params=list(query), header_params=headers,
                                                auth_settings=["BearerToken"])
    try:
        # the client serialises JSON (and structured apply-patch YAML) bodies itself
        resp = api.call_api(method, url, headers, body, _request_timeout=60)
        data: bytes = resp.read()  # type: ignore[no-untyped-call]
    except ApiException as exc:  # the transport's TLS and connection errors
        raise ApiFailure(int(exc.status or 0), str(exc.reason)) from None
    except (HTTPError, OSError) as exc:
        raise ApiFailure(0, f"{type(exc).__name__}: {exc}") from None
    if not 200 <= resp.status <= 299:
        raise ApiFailure(resp.status, str(resp.reason), data.decode(errors="replace"))
    answer = json.loads(data) if data else {}
    return answer if isinstance(answer, dict) else {}


def apply(api: client.ApiClient, obj: Obj, *, status: bool = False, retry_s: float = 30.0) -> Obj:
    """Server-side apply ``obj`` (and with ``status`` its ``.status`` through ``/status``).

    A 404 is retried for ``retry_s``: a CRD just Established may not be served yet."""
    obj = copy.deepcopy(obj)
    state = obj.pop("status", None)
    path = object_path(obj)
    query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
    deadline = time.monotonic() + retry_s
    while True:
        try:
            out = _call(api, "PATCH", path, obj, "application/apply-patch+yaml", query)
            break
        except ApiFailure as exc:
            if exc.status == 404 and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise BootstrapError(f"applying {describe(obj)}: {exc.status} {exc.message}") from None
    if status and state is not None:
        body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace")},
                "status": state}
        try:
            out = _call(api, "PATCH", path + "/status", body, "application/apply-patch+yaml",
                        [("fieldManager", FIELD_MANAGER + "-status"), ("force", "true")])
        except ApiFailure as exc:
            raise BootstrapError(f"applying the status of {describe(obj)}: {exc.status} {exc.message}") from None
    return out


def apply_all(api: client.ApiClient, objs: Sequence[Obj], progress: Progress = lambda _: None,
              workers: int = 1) -> None:
    if workers <= 1:
        for obj in objs:
            apply(api, obj)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda o: apply(api, o), objs))


def wait_established(api: client.ApiClient, names: Sequence[str], timeout: float = 180.0) -> float:
    start = time.monotonic()
    pending = set(names)
    while pending:
        for name in sorted(pending):
            crd = _call(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = {c.get("type"): c.get("status") for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                pending.discard(name)
        if pending:
            if time.monotonic() - start > timeout:
                raise BootstrapError(f"CRDs not Established after {timeout:.0f} s: {', '.join(sorted(pending))}")
            time.sleep(0.2)
    return time.monotonic() - start


# --- the objects ------------------------------------------------------------------------------


def _cert_b64(pki: Pki | None, name: str) -> str:
    """A certificate of the lab as base64, or for a plan (no PKI yet) a placeholder."""
    return pki.b64(name) if pki is not None else f"<base64 of the lab's {name}.crt>"


def _key_b64(pki: Pki | None, name: str) -> str:
    return _b64(pki.key(name).read_bytes()) if pki is not None else f"<base64 of the lab's {name}.key>"


def kubevirt_basics(pki: Pki | None) -> list[Obj]:
    ns = KUBEVIRT_NAMESPACE

    def tls(name: str, cert: str) -> Obj:
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": ns},
                "data": {"tls.crt": _cert_b64(pki, cert), "tls.key": _key_b64(pki, cert)}}

    ca = pki.pem("kubevirt-ca").decode() if pki is not None else "<the lab's kubevirt-ca.crt>"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubevirt-ca", "namespace": ns},
         "data": {"ca-bundle": ca}},
        tls("kubevirt-ca", "kubevirt-ca"),
        tls("kubevirt-virt-api-certs", "virt-api"),
        tls("kubevirt-controller-certs", "virt-controller"),
    ]


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def kubevirt_cr(build: ControlPlaneBuild, *, use_emulation: bool, feature_gates: Sequence[str] = ()) -> Obj:
    """The generator's KubeVirt CR with this lab's configuration and the status virt-operator writes."""
    (cr,) = build.manifests("kv-cr")
    developer: Obj = {"useEmulation": use_emulation}
    if feature_gates:
        developer["featureGates"] = list(feature_gates)
    cr.setdefault("spec", {}).setdefault("configuration", {})["developerConfiguration"] = developer
    version = build.versions.kubevirt
    now = _now()
    cr["status"] = {
        "phase": "Deployed", "defaultArchitecture": "amd64", "operatorVersion": version,
        "observedKubeVirtVersion": version, "targetKubeVirtVersion": version,
        "observedKubeVirtRegistry": REGISTRY, "targetKubeVirtRegistry": REGISTRY,
        "observedDeploymentID": "virtproof-lab", "targetDeploymentID": "virtproof-lab",
        "observedDeploymentConfig": "{}", "observedGeneration": 1,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "AllComponentsReady",
             "message": "virt-api and virt-controller run as host processes of the virtproof lab",
             "lastProbeTime": now, "lastTransitionTime": now},
            {"type": "Progressing", "status": "False", "reason": "AllComponentsReady", "message": "",
             "lastProbeTime": now, "lastTransitionTime": now},
            {"type": "Degraded", "status": "False", "reason": "AllComponentsReady", "message": "",
             "lastProbeTime": now, "lastTransitionTime": now},
        ],
    }
    return cr


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


NODE_RESOURCES = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi",
                  "devices.kubevirt.io/kvm": "1k", "devices.kubevirt.io/tun": "1k",
                  "devices.kubevirt.io/vhost-net": "1k"}


def node_labels(name: str) -> dict[str, str]:
    """What a Node carries once kubelet and virt-handler's node labeller ran on it.

    Launcher pods select ``machine-type.node.kubevirt.io/q35`` and ``kubevirt.io/schedulable``;
    migration target pods select the source's CPU model, vendor and exact machine type."""
    return {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "kubevirt.io/schedulable": "true",
        "machine-type.node.kubevirt.io/q35": "true", f"machine-type.node.kubevirt.io/{MACHINE_TYPE}": "true",
        f"cpu-model.node.kubevirt.io/{CPU_MODEL}": "true",
        f"cpu-model-migration.node.kubevirt.io/{CPU_MODEL}": "true",
        f"host-model-cpu.node.kubevirt.io/{CPU_MODEL}": "true",
        "cpu-vendor.node.kubevirt.io/Intel": "true",
        "cpu-timer.node.kubevirt.io/tsc-frequency": "2400000000", "cpu-timer.node.kubevirt.io/tsc-scalable": "true",
    }


def node_object(name: str, address: str, kubelet_version: str) -> Obj:
    now = _now()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name)},
        "spec": {},
        "status": {
            "capacity": dict(NODE_RESOURCES), "allocatable": dict(NODE_RESOURCES),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "virtproof node agent", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": kubelet_version, "kubeProxyVersion": "", "architecture": "amd64",
                         "operatingSystem": "linux", "containerRuntimeVersion": "virtproof://simnodes",
                         "osImage": "virtproof simulated node", "kernelVersion": "", "machineID": "",
                         "systemUUID": "", "bootID": ""},
        },
    }


def create_nodes(api: client.ApiClient, nodes: Sequence[tuple[str, str]], kubelet_version: str,
                 progress: Progress = lambda _: None) -> None:
    """Apply each Node with its status, then clear the taints admission added on create."""

    def one(item: tuple[str, str]) -> None:
        obj = node_object(item[0], item[1], kubelet_version)
        apply(api, obj, status=True)
        try:
            _call(api, "PATCH", f"/api/v1/nodes/{item[0]}", {"spec": {"taints": None}},
                  "application/merge-patch+json")
        except ApiFailure as exc:
            raise BootstrapError(f"clearing the taints of Node {item[0]}: {exc.status} {exc.message}") from None

    done = 0
    with ThreadPoolExecutor(min(8, max(1, len(nodes)))) as pool:
        for _ in pool.map(one, nodes):
            done += 1
            if done % 50 == 0:
                progress(f"created {done}/{len(nodes)} Nodes")


def webhooks(build: ControlPlaneBuild, pki: Pki | None, virt_api_port: int) -> list[Obj]:
    """virt-api's webhook configurations, pointed at its loopback address."""
    out = []
    for config in build.manifests("webhooks"):
        config = copy.deepcopy(config)
        (config.get("metadata") or {}).pop("annotations", None)  # virt-operator's CA injector's
        for hook in config.get("webhooks") or []:
            service = hook["clientConfig"].pop("service")
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{virt_api_port}{service.get('path', '')}"
            hook["clientConfig"]["caBundle"] = _cert_b64(pki, "kubevirt-ca")
        out.append(config)
    return out


def api_services(build: ControlPlaneBuild, pki: Pki | None, virt_api_port: int) -> list[Obj]:
    """The ExternalName Service and virt-api's APIServices (subresources.kubevirt.io)."""
    out: list[Obj] = [{"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "virt-api", "namespace": KUBEVIRT_NAMESPACE},
                       "spec": {"type": "ExternalName", "externalName": "localhost"}}]
    for svc in build.manifests("apiservices"):
        svc = copy.deepcopy(svc)
        (svc.get("metadata") or {}).pop("annotations", None)
        svc.pop("status", None)
        svc["spec"]["service"]["port"] = virt_api_port
        svc["spec"]["caBundle"] = _cert_b64(pki, "kubevirt-ca")
        out.append(svc)
    return out


def suite_rbac() -> list[Obj]:
    """``deploy/rbac/virtproof-clusterrole.yaml``, as shipped."""
    text = (resources.files("virtproof.deploy") / "rbac" / "virtproof-clusterrole.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def suite_token(api: client.ApiClient, seconds: int = SUITE_TOKEN_SECONDS) -> str:
    """A token of the suites' ServiceAccount (TokenRequest), bound to nothing but its lifetime."""
    core = client.CoreV1Api(api)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[], expiration_seconds=seconds))
    try:
        out = core.create_namespaced_service_account_token(SUITE_SERVICE_ACCOUNT, SUITE_NAMESPACE, request)
    except ApiException as exc:
        raise BootstrapError(f"TokenRequest for {SUITE_NAMESPACE}/{SUITE_SERVICE_ACCOUNT}: "
                             f"{exc.status} {exc.reason}") from None
    if out.status is None or not out.status.token:
        raise BootstrapError(f"TokenRequest for {SUITE_NAMESPACE}/{SUITE_SERVICE_ACCOUNT} returned no token")
    return str(out.status.token)


@dataclass(frozen=True)
class Manifests:
    """Everything ``plan`` shows and ``up`` applies, rendered for one lab."""

    basics: list[Obj]
    crds: list[Obj]
    rbac: list[Obj]
    kubevirt: Obj
    nodes: list[Obj]
    suite_rbac: list[Obj]
    webhooks: list[Obj]
    api_services: list[Obj]


def render(build: ControlPlaneBuild, pki: Pki | None, virt_api_port: int, nodes: Sequence[tuple[str, str]], *,
           use_emulation: bool, feature_gates: Sequence[str] = ()) -> Manifests:
    return Manifests(
        basics=kubevirt_basics(pki), crds=build.manifests("crds"), rbac=build.manifests("rbac"),
        kubevirt=kubevirt_cr(build, use_emulation=use_emulation, feature_gates=feature_gates),
        nodes=[node_object(n, a, build.versions.kubernetes) for n, a in nodes], suite_rbac=suite_rbac(),
        webhooks=webhooks(build, pki, virt_api_port), api_services=api_services(build, pki, virt_api_port),
    )


def write_rendered(manifests: Manifests, directory: Path) -> None:
    """The lab's manifests as applied, as JSON (private keys included: the directory is the lab's, 0700).
    The CRDs are the build's own (``manifests/crds.yaml`` there)."""
    for name in ("basics", "rbac", "nodes", "suite_rbac", "webhooks", "api_services"):
        (directory / f"{name}.json").write_text(json.dumps(getattr(manifests, name), indent=1))
    (directory / "kubevirt.json").write_text(json.dumps(manifests.kubevirt, indent=1))
