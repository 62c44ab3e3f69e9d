"""Who the agent is when it writes: each node's kubelet, and each node's virt-handler.

- **kubelet**: a client certificate for ``system:node:<node>`` (group ``system:nodes``), got the
  way a bootstrapping kubelet gets one (``pkg/kubelet/certificate/bootstrap``): a
  CertificateSigningRequest for signer ``kubernetes.io/kube-apiserver-client-kubelet`` with
  usages digital signature + client auth, approved (here by the admin identity, as
  kube-controller-manager's csrapproving controller would for a bootstrap token), signed by
  kube-controller-manager's csrsigning controller. The Node authorizer and the NodeRestriction
  admission plugin then limit the agent to its own node's objects, as on a real node.
- **virt-handler**: virt-api's VMI update admitter (NodeRestriction feature gate, Beta in v1.9)
  wants the ``kubevirt-handler`` service account with the user extra
  ``authentication.kubernetes.io/node-name``, which kube-apiserver adds only to tokens bound to
  a pod on that node (spike REPORT §3.7). So, as the DaemonSet would, there is one Pod
  ``kubevirt/virt-handler-<node>`` bound to each node (hostNetwork; the node's kubelet reports it
  Running, and this agent is its process), and the node's kubelet identity requests a
  TokenRequest bound to it, as the kubelet does for projected service-account tokens. Tokens live
  an hour and are renewed at 80 % of their life (the kubelet's token manager rule).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from virtproof.core.secretfile import write_secret
from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, path_of

log = logging.getLogger("virtproof.lab.simnodes")

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
HANDLER_NAMESPACE = "kubevirt"
HANDLER_SA = "kubevirt-handler"
HANDLER_IMAGE = "registry.invalid/kubevirt/virt-handler:v1.9.0"
TOKEN_SECONDS = 3600


class IdentityError(RuntimeError):
    """A node identity could not be obtained."""


def kubelet_certificate(admin: Kube, node: str, directory: Path, timeout: float = 60.0) -> tuple[Path, Path]:
    """(certificate, key) files for ``system:node:<node>``, issued through the CSR API."""
    cert_file, key_file = directory / f"kubelet-{node}.crt", directory / f"kubelet-{node}.key"
    if cert_file.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        if cert.not_valid_after_utc.timestamp() - time.time() > 3600:
            return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")]))
        .sign(key, hashes.SHA256())
    )
    name = f"simnodes-kubelet-{node}-{int(time.time())}"
    path = path_of("certificates.k8s.io", "v1", "certificatesigningrequests")
    created = admin.create(path, {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
                 "signerName": KUBELET_SIGNER, "usages": ["digital signature", "client auth"],
                 "expirationSeconds": 86400},
    })
    obj_path = path_of("certificates.k8s.io", "v1", "certificatesigningrequests", name=name)
    status = created.get("status") or {}
    if not any(c.get("type") == "Approved" for c in status.get("conditions") or []):
        created.setdefault("status", {})["conditions"] = [
            {"type": "Approved", "status": "True", "reason": "SimnodesApprove",
             "message": "node agent approves its own node's kubelet client certificate"}
        ]
        try:
            admin.replace(obj_path + "/approval", created)
        except ApiError as exc:
            if exc.status != 409:  # kube-controller-manager's approver was faster
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = admin.get(obj_path)
        issued = (current.get("status") or {}).get("certificate")
        if issued:
            write_secret(key_file, key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), replace=True)
            write_secret(cert_file, base64.b64decode(issued), replace=True)
            try:
                admin.delete(obj_path)
            except ApiError:
                pass
            return cert_file, key_file
        time.sleep(0.2)
    raise IdentityError(f"the CSR for system:node:{node} was not signed in {timeout:.0f} s "
                        "(is kube-controller-manager running with --cluster-signing-cert-file?)")


def handler_pod(node: str) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"virt-handler-{node}", "namespace": HANDLER_NAMESPACE,
                     "labels": {"kubevirt.io": "virt-handler", "app.kubernetes.io/managed-by": "virtproof-simnodes"}},
        # the ServiceAccount admission plugin adds the kube-api-access projected token volume: the
        # Node authorizer lets a node request only tokens whose audience a pod volume names
        "spec": {"nodeName": node, "serviceAccountName": HANDLER_SA, "hostNetwork": True,
                 "restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "virt-handler", "image": HANDLER_IMAGE}]},
    }


def _has_token_volume(pod: Obj) -> bool:
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return True
    return False


def ensure_handler_pod(admin: Kube, node: str) -> Obj:
    path = path_of("", "v1", "pods", HANDLER_NAMESPACE)
    try:
        pod = admin.get(f"{path}/virt-handler-{node}")
        if _has_token_volume(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            return pod
        admin.delete(f"{path}/virt-handler-{node}", {"gracePeriodSeconds": 0})
        for _ in range(50):  # wait until the old one is gone
            try:
                admin.get(f"{path}/virt-handler-{node}")
            except ApiError as exc:
                if exc.status == 404:
                    break
                raise
            time.sleep(0.1)
    except ApiError as exc:
        if exc.status != 404:
            raise
    try:
        return admin.create(path, handler_pod(node))
    except ApiError as exc:
        if exc.status != 409:
            raise
        return admin.get(f"{path}/virt-handler-{node}")


def token_seconds(pod: Obj) -> int:
    """The projected token volume's expirationSeconds (what the kubelet requests), else an hour."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token:
                return int(token.get("expirationSeconds") or TOKEN_SECONDS)
    return TOKEN_SECONDS


GRAPH_WAIT_S = 30.0  # how long a TokenRequest waits for the Node authorizer's graph


@dataclass
class HandlerToken:
    """A node's virt-handler identity and the token that backs it."""

    node: str
    kube: Kube
    expires: float
    pod_uid: str


class HandlerIdentities:
    """virt-handler clients per node, with their tokens renewed in the background."""

    def __init__(self, admin: Kube, kubelets: dict[str, Kube], server: str, ca_file: Path) -> None:
        self.admin, self.kubelets, self.server, self.ca_file = admin, kubelets, server, ca_file
        self.tokens: dict[str, HandlerToken] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _request(self, node: str, pod: Obj) -> tuple[str, float]:
        kubelet = self.kubelets.get(node, self.admin)
        meta = pod["metadata"]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": token_seconds(pod),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                            "uid": meta["uid"]}}}
        # The Node authorizer decides from a graph its informers fill (Kubernetes
        # plugin/pkg/auth/authorizer/node/graph_populator.go): a pod bound a moment ago may not be
        # in it yet, and node_authorizer.go then answers 403 "no relationship found between
        # node ...". The kubelet's token manager retries (pkg/kubelet/token/token_manager.go);
        # so does this, for a while (seen with 11 nodes started at once on a busy host).
        deadline = time.monotonic() + GRAPH_WAIT_S
        while True:
            try:
                answer = kubelet.create(
                    path_of("", "v1", "serviceaccounts", HANDLER_NAMESPACE, HANDLER_SA, "token"), body)
                break
            except ApiError as exc:
                if exc.status != 403 or "no relationship found" not in exc.message or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        token = str(answer["status"]["token"])
        return token, time.time() + token_seconds(pod)

    def start(self, nodes: list[str]) -> None:
        def one(node: str) -> None:
            pod = ensure_handler_pod(self.admin, node)
            token, expires = self._request(node, pod)
            kube = Kube.with_token(self.server, self.ca_file, token, f"virt-handler-{node}")
            self.tokens[node] = HandlerToken(node, kube, expires, str(pod["metadata"]["uid"]))

        with ThreadPoolExecutor(8, thread_name_prefix="identity") as pool:
            list(pool.map(one, nodes))
        self._thread = threading.Thread(target=self._renew, name="handler-tokens", daemon=True)
        self._thread.start()

    def client(self, node: str) -> Kube:
        return self.tokens[node].kube

    def _renew(self) -> None:
        while not self._stop.wait(30.0):
            for node, entry in list(self.tokens.items()):
                if time.time() < entry.expires - 0.2 * TOKEN_SECONDS:  # the kubelet renews at 80 %
                    continue
                try:
                    pod = ensure_handler_pod(self.admin, node)
                    token, expires = self._request(node, pod)
                    entry.kube.set_token(token)
                    entry.expires = expires
                except ApiError as exc:
                    log.warning("renewing the virt-handler token of %s: %s", node, exc)

    def stop(self) -> None:
        self._stop.set()
        for entry in self.tokens.values():
            entry.kube.close()


def remove_handler_pods(admin: Kube, nodes: list[str]) -> None:
    """Delete the agent's virt-handler pods (when the agent stops, the DaemonSet pods go)."""
    for node in nodes:
        path = path_of("", "v1", "pods", HANDLER_NAMESPACE, f"virt-handler-{node}")
        try:
            admin.delete(path, {"gracePeriodSeconds": 0})
        except ApiError:
            pass

