"""The node agent's API client: plain JSON over the official ``kubernetes`` client's transport.

The agent reads and writes many objects (1,000 paper VMIs and their pods) and only ever needs
their JSON: it asks ``kubernetes.client.ApiClient`` to serialize the request (URL, query,
authentication headers) and to send it over its TLS pool, and parses the answer itself with
``json.loads`` instead of the client's model deserialization, which costs far more CPU per
object. One ``Kube`` is one identity: the admin kubeconfig (informers), a node's kubelet client
certificate, or a virt-handler service-account token (``set_token`` rotates it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config

Obj = dict[str, Any]
Query = Sequence[tuple[str, str | int | bool]]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


AGENT_UA = "virtproof-simnodes/0.1 (linux/amd64)"
KUBELET_UA = "kubelet/v1.34.4 (linux/amd64) kubernetes/virtproof-simnodes"
HANDLER_UA = "virt-handler/v1.9.0 (linux/amd64) kubernetes/virtproof-simnodes"


class ApiError(Exception):
    """A non-2xx answer (or no answer) from the API server."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def message(self) -> str:
        try:
            return str(json.loads(self.body).get("message", self.body))
        except (ValueError, AttributeError):
            return self.body


def path_of(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None,
            sub: str | None = None) -> str:
    """The REST path of a collection or object (``group`` "" is the core API)."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    if sub:
        base += f"/{sub}"
    return base


class Kube:
    """One identity's connection. Thread-safe (urllib3's pool is)."""

    def __init__(self, configuration: client.Configuration, name: str, user_agent: str = AGENT_UA) -> None:
        configuration.retries = False  # the agent's loops retry; urllib3 must not hide failures
        self.name = name
        self.configuration = configuration
        self.api = client.ApiClient(configuration)
        # the API server names a managedFields entry after the User-Agent's first word: "kubelet",
        # "virt-handler", as the real components' writes are
        self.api.user_agent = user_agent
        self._token_lock = threading.Lock()
        self.requests: dict[str, int] = {}  # by method, for the agent's own cost accounting

    @classmethod
    def from_kubeconfig(cls, path: Path, name: str = "admin") -> Kube:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(path), client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(configuration, name)

    @classmethod
    def with_certificate(cls, server: str, ca_file: Path, cert_file: Path, key_file: Path, name: str,
                         user_agent: str = KUBELET_UA) -> Kube:
        configuration = client.Configuration()
        configuration.host = server
        configuration.ssl_ca_cert = str(ca_file)
        configuration.cert_file = str(cert_file)
        configuration.key_file = str(key_file)
        return cls(configuration, name, user_agent)

    @classmethod
    def with_token(cls, server: str, ca_file: Path, token: str, name: str, user_agent: str = HANDLER_UA) -> Kube:
        configuration = client.Configuration()
        configuration.host = server
        configuration.ssl_ca_cert = str(ca_file)
        kube = cls(configuration, name, user_agent)
        kube.set_token(token)
        return kube

    def set_token(self, token: str) -> None:
        with self._token_lock:
            self.configuration.api_key = {"authorization": token}
            self.configuration.api_key_prefix = {"authorization": "Bearer"}

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    # --- requests ------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: Query, body: object, content_type: str,
              timeout: float | tuple[float, float]) -> Any:
        headers = {"Accept": JSON, "Content-Type": content_type}
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list(query), header_params=headers, auth_settings=["BearerToken"]
        )
        self.requests[method] = self.requests.get(method, 0) + 1
        try:  # the transport serializes a JSON body itself (json.dumps)
            return self.api.call_api(method, url, headers, body, _request_timeout=timeout)
        except client.ApiException as exc:  # raised by the transport for TLS errors
            raise ApiError(int(exc.status or 0), str(exc.reason)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc)) from None

    def request(self, method: str, path: str, *, query: Query = (), body: object = None,
                content_type: str = JSON, timeout: float = 30.0) -> Obj:
        """Send one request; the decoded JSON answer, or ApiError."""
        resp = self._send(method, path, query, body, content_type, timeout)
        data: bytes = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, str(resp.reason), data.decode(errors="replace"))
        if not data:
            return {}
        answer = json.loads(data)
        return answer if isinstance(answer, dict) else {"items": answer}

    def get(self, path: str, query: Query = ()) -> Obj:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Mapping[str, Any]) -> Obj:
        return self.request("POST", path, body=body)

    def replace(self, path: str, body: Mapping[str, Any]) -> Obj:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: object, content_type: str = STRATEGIC_PATCH) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> Obj:
        return self.request("DELETE", path, body=body)

    def watch_lines(self, path: str, query: Query, idle_timeout: float) -> Iterator[bytes]:
        """The lines of a watch response (one JSON event each). ``idle_timeout`` bounds a read."""
        resp = self._send("GET", path, [*query, ("watch", "true")], None, JSON, (10.0, idle_timeout))
        raw: urllib3.BaseHTTPResponse = resp.response
        try:
            if not 200 <= resp.status <= 299:
                raise ApiError(resp.status, str(resp.reason), raw.read().decode(errors="replace"))
            pending = b""
            for chunk in raw.stream(65536, decode_content=True):
                pending += chunk
                while True:
                    cut = pending.find(b"\n")
                    if cut < 0:
                        break
                    line, pending = pending[:cut], pending[cut + 1 :]
                    if line.strip():
                        yield line
        finally:
            raw.release_conn()
