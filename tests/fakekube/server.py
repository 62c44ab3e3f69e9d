"""A fake Kubernetes API server the real ``kubernetes`` client talks to over HTTP.

It serves discovery, CRUD, list and watch (a chunked stream of JSON events), merge patches,
and SelfSubjectAccessReviews (every access allowed). Every KubeVirt/CDI object written is
validated against the schemas bundled in ``lab/kubevirt/schemas`` (``virtproof.lab.kubevirt.schema``);
an invalid one is rejected with 422. Requests need the bearer token.
"""

from __future__ import annotations

import http.server
import json
import queue
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from virtproof.lab.kubevirt import schema as kubevirt_schema

from fakekube.store import Conflict, NotFound, Obj, Store


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: str | None = None

    @property
    def gvr(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}" if self.group else f"{self.version}/{self.plural}"


KINDS = [
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "pods", "Pod", True),
    Kind("", "v1", "services", "Service", True),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("kubevirt.io", "v1", "virtualmachines", "VirtualMachine", True, "v1.VirtualMachine"),
    Kind("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance", True,
         "v1.VirtualMachineInstance"),
    Kind("kubevirt.io", "v1", "virtualmachineinstancemigrations", "VirtualMachineInstanceMigration", True,
         "v1.VirtualMachineInstanceMigration"),
    Kind("kubevirt.io", "v1", "kubevirts", "KubeVirt", True, "v1.KubeVirt"),
    Kind("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", "MigrationPolicy", False,
         "v1alpha1.MigrationPolicy"),
    Kind("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume", True, "v1beta1.DataVolume"),
    Kind("cdi.kubevirt.io", "v1beta1", "cdis", "CDI", False, "v1beta1.CDI"),
    # CDI's swagger.json (v1.66.0) defines no StorageProfile: not validated
    Kind("cdi.kubevirt.io", "v1beta1", "storageprofiles", "StorageProfile", False),
    Kind("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
]
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_body(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also what a strategic merge patch of plain fields does)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


# (verb, group, resource, subresource, namespace) -> allowed
AccessPolicy = Callable[[dict[str, Any]], bool]


class FakeApiServer:
    def __init__(self, store: Store, token: str, host: str = "127.0.0.1") -> None:
        self.store = store
        self.token = token
        self.access: AccessPolicy = lambda attrs: True
        self.port_allocator: Callable[[], int] = _sequential_port
        self.validated = 0
        self.rejected: list[str] = []
        self.requests = 0
        self.version = {"major": "1", "minor": "31", "gitVersion": "v1.31.6-fake", "platform": "linux/amd64",
                        "buildDate": "2026-01-01T00:00:00Z", "compiler": "gc", "gitCommit": "0" * 40,
                        "gitTreeState": "clean", "goVersion": "go1.23"}
        server = self

        class Handler(_Handler):
            api = server

        self.httpd = _Server((host, 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-kube", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.store.close_watchers()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    # validation -------------------------------------------------------------------------
    def check(self, kind: Kind, obj: Obj) -> None:
        if obj.get("kind") not in (None, kind.kind):
            raise ApiError(400, "BadRequest", f"kind {obj.get('kind')!r} sent to {kind.plural}")
        if kind.schema is None:
            return
        self.validated += 1
        problems = kubevirt_schema.validate(kind.schema, obj)
        if problems:
            name = (obj.get("metadata") or {}).get("name", "?")
            message = f"{kind.kind} {name!r} is invalid: " + "; ".join(problems[:10])
            self.rejected.append(message)
            raise ApiError(422, "Invalid", message)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Handler(http.server.BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    _drained = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # plumbing ---------------------------------------------------------------------------
    def _send(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = b"" if self._drained else (self.rfile.read(length) if length else b"")
        self._drained = True
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ApiError(400, "BadRequest", "body is not JSON") from None

    def _dispatch(self, method: str) -> None:
        self.api.requests += 1
        self._drained = False
        try:
            if self.headers.get("Authorization") != f"Bearer {self.api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._route(method, [p for p in url.path.split("/") if p], query)
        except ApiError as exc:
            if method != "GET" or "watch" not in self.path:
                self._drain()
            self._send(exc.code, status_body(exc.code, exc.reason, exc.message))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length and not self._drained:
            self.rfile.read(length)
        self._drained = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # routing ----------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        if parts == ["version"]:
            return self._send(200, self.api.version)
        if parts == ["api"]:
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if parts == ["apis"]:
            groups: dict[str, str] = {k.group: k.version for k in KINDS if k.group}
            groups["authorization.k8s.io"] = "v1"
            groups["policy"] = "v1"
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups.items()]})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"no route {'/'.join(parts)}")
        if not rest:
            return self._send(200, {"kind": "APIResourceList", "groupVersion": f"{group}/{version}".strip("/"),
                                    "resources": [{"name": k.plural, "kind": k.kind, "namespaced": k.namespaced,
                                                   "verbs": ["create", "delete", "get", "list", "patch", "watch"]}
                                                  for k in KINDS if (k.group, k.version) == (group, version)]})
        if (group, rest) == ("authorization.k8s.io", ["selfsubjectaccessreviews"]) and method == "POST":
            return self._access_review(self._body())
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {rest[0]}")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if kind.plural == "namespaces" and namespace == "" and len(rest) > 1:
            name = rest[1]
        self._resource(method, kind, namespace, name, sub, query)

    def _access_review(self, body: Obj) -> None:
        attrs = ((body.get("spec") or {}).get("resourceAttributes")) or {}
        allowed = self.api.access(attrs)
        body["status"] = {"allowed": allowed, **({} if allowed else {"reason": "denied by the fake RBAC"})}
        body.setdefault("metadata", {})
        self._send(201, body)

    def _resource(self, method: str, kind: Kind, ns: str, name: str, sub: str, query: dict[str, str]) -> None:
        store = self.api.store
        if kind.namespaced and not ns and method not in ("GET",):
            raise ApiError(400, "BadRequest", f"{kind.plural} are namespaced")
        try:
            if method == "GET" and not name:
                if query.get("watch") in ("true", "True", "1"):
                    return self._watch(kind, ns or None, query)
                items, rv = store.list(kind.gvr, ns or None, query.get("labelSelector", ""))
                return self._send(200, {"kind": f"{kind.kind}List",
                                        "apiVersion": f"{kind.group}/{kind.version}".strip("/"),
                                        "metadata": {"resourceVersion": rv}, "items": items})
            if method == "GET":
                return self._send(200, store.get(kind.gvr, ns, name))
            if method == "POST" and not name:
                body = self._body()
                body.setdefault("apiVersion", f"{kind.group}/{kind.version}".strip("/"))
                body.setdefault("kind", kind.kind)
                self.api.check(kind, body)
                if query.get("dryRun") == "All":  # validated and admitted, never stored
                    return self._send(201, body)
                if kind.plural == "services":
                    _allocate_node_ports(body, self.api.port_allocator)
                return self._send(201, store.create(kind.gvr, ns, body))
            if method in ("PUT", "PATCH") and name:
                body = self._body()
                current = store.get(kind.gvr, ns, name)
                if method == "PUT":
                    new = body
                elif isinstance(body, list):
                    raise ApiError(415, "UnsupportedMediaType", "JSON patch is not supported by the fake")
                else:
                    new = merge_patch(current, body)
                self.api.check(kind, new)
                return self._send(200, store.update(kind.gvr, ns, name, lambda o: _replace(o, new)))
            if method == "DELETE" and name:
                self._body()
                obj = store.delete(kind.gvr, ns, name)
                if kind.plural == "namespaces":  # the namespace controller deletes what it held
                    for other in KINDS:
                        if other.namespaced:
                            for item in store.peek(other.gvr, name):
                                store.delete(other.gvr, name, item["metadata"]["name"])
                return self._send(200, obj)
        except NotFound:
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found') from None
        except Conflict:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{name}" already exists') from None
        raise ApiError(405, "MethodNotAllowed", f"{method} not supported on {kind.plural}")

    def _watch(self, kind: Kind, ns: str | None, query: dict[str, str]) -> None:
        store = self.api.store
        watcher = store.watch(kind.gvr, ns, query.get("labelSelector", ""), query.get("resourceVersion", ""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if watcher is None:
            line = json.dumps({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")})
            self._chunk(line.encode() + b"\n")
            self._chunk(b"")
            return
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    line = watcher.events.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    break
                batch = [line]
                while len(batch) < 256:
                    try:
                        more = watcher.events.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._chunk(b"".join(batch))
                        raise BrokenPipeError
                    batch.append(more)
                self._chunk(b"".join(batch))
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            store.unwatch(watcher)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _replace(target: Obj, new: Obj) -> None:
    meta = target.get("metadata") or {}
    target.clear()
    target.update(new)
    for key in ("uid", "creationTimestamp", "namespace", "name"):
        if key in meta:
            target.setdefault("metadata", {})[key] = meta[key]


_NODE_PORT = [30000]
_NODE_PORT_LOCK = threading.Lock()


def _sequential_port() -> int:
    with _NODE_PORT_LOCK:
        _NODE_PORT[0] += 1
        return _NODE_PORT[0]


def _allocate_node_ports(body: Obj, allocate: Callable[[], int]) -> None:
    spec = body.get("spec") or {}
    if spec.get("type") != "NodePort":
        return
    for port in spec.get("ports") or []:
        if not port.get("nodePort"):
            port["nodePort"] = allocate()
