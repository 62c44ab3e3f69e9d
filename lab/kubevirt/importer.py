"""Disk import for V2V: the harness serves a converted disk over HTTP and CDI imports it
into a DataVolume (``source.http``); a VM then boots from that DataVolume.

The HTTP server binds ``bind_address`` (an address the cluster's importer pods can reach, e.g.
the host's address on the kind network) and serves exactly one file under a random path.
"""

from __future__ import annotations

import http.server
import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt.informer import Informer
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.resources import DATAVOLUME, STORAGE_PROFILE, Obj
from virtproof.lab.kubevirt.storage import StorageDefaults, failure_of, profile_defaults, request_for, virtual_size
from virtproof.lab.platform import Capability, PlatformError, require

if TYPE_CHECKING:
    from virtproof.lab.kubevirt.platform import KubeVirtPlatform

log = logging.getLogger("virtproof.lab.kubevirt")


class DiskServer:
    """Serves one file at ``http://<advertise>:<port>/<token>/<name>`` until closed."""

    def __init__(self, path: Path, bind_address: str = "0.0.0.0", advertise: str | None = None) -> None:
        self.path = path
        token = secrets.token_hex(8)
        self.url_path = f"/{token}/{path.name}"
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != served.url_path:
                    self.send_error(404)
                    return
                size = served.path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(served.path, "rb") as fh:
                    shutil.copyfileobj(fh, self.wfile, 1 << 20)

            def do_HEAD(self) -> None:
                if self.path != served.url_path:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(served.path.stat().st_size))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("disk server: " + format, *args)

        self.httpd = http.server.ThreadingHTTPServer((bind_address, 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{advertise or bind_address}:{self.port}{self.url_path}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="disk-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@dataclass(frozen=True)
class ImportResult:
    data_volume: str
    phase: str
    seconds: float
    progress: str


def _storage_for(p: KubeVirtPlatform, storage_class: str | None) -> StorageDefaults:
    """The class's (or the default class's) StorageProfile and binding mode, as far as we may read them."""
    name = storage_class
    classes: list[Any] = []
    try:
        p.kube.conn.limiter.acquire()
        classes = list(client.StorageV1Api(p.kube.conn.api).list_storage_class().items)
    except ApiException as exc:
        if exc.status not in (403, 404):  # not ours to read: CDI's defaults then decide
            raise
    if name is None:
        name = next((str(c.metadata.name) for c in classes if c.metadata and (c.metadata.annotations or {}).get(
            "storageclass.kubernetes.io/is-default-class") == "true"), None)
    chosen = next((c for c in classes if c.metadata and c.metadata.name == name), None)
    profile = None
    if name:
        try:
            profile = p.kube.get(STORAGE_PROFILE, name)
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise
    return profile_defaults(profile, {"volumeBindingMode": chosen.volume_binding_mode} if chosen else None)


def import_disk(
    p: KubeVirtPlatform, disk: Path, name: str, *, advertise: str, size: str | None = None,
    bind_address: str = "0.0.0.0", timeout: float = 900.0, storage_class: str | None = None,
) -> ImportResult:
    """Serve ``disk``, create a DataVolume importing it (sized from the disk's virtual size), wait for
    Succeeded (watch, not poll), or fail with CDI's own message as soon as CDI gives up."""
    require(p, Capability.DISK_IMPORT)
    size = size or request_for(virtual_size(disk))
    defaults = _storage_for(p, storage_class)
    server = DiskServer(disk, bind_address, advertise)
    state: dict[str, Any] = {}
    cond = threading.Condition()

    def on_dv(kind: str, obj: Obj, received: float) -> None:
        if (obj.get("metadata") or {}).get("name") != name:
            return
        with cond:
            state.update(obj.get("status") or {})
            state["deleted"] = kind == "DELETED"
            cond.notify_all()

    informer = Informer(p.kube, DATAVOLUME, p.namespace, p.selector, on_dv)
    informer.start()
    started = time.time()
    try:
        informer.synced.wait(30)
        source = DiskSource(http_url=server.url, size=size, storage_class=storage_class,
                            access_modes=defaults.access_modes, volume_mode=defaults.volume_mode)
        body = manifests.data_volume(name, p.namespace, p.config.run_id, source,
                                     bind_immediately=defaults.binding_mode == "WaitForFirstConsumer")
        try:
            p.kube.create(DATAVOLUME, body, p.namespace)
        except ApiException as exc:
            raise PlatformError(f"creating DataVolume {name}: {p._api_error(exc)}") from None
        with cond:
            finished = cond.wait_for(
                lambda: state.get("phase") == "Succeeded" or failure_of(state) is not None or state.get("deleted"),
                timeout)
        phase = str(state.get("phase") or "none")
        why = failure_of(state)
        if why is not None:
            raise PlatformError(f"DataVolume {name} import failed after {time.time() - started:.0f} s: {why}")
        if not finished or phase != "Succeeded":
            raise PlatformError(f"DataVolume {name} import ended in phase {phase} after {time.time() - started:.0f} s")
        return ImportResult(name, phase, time.time() - started, str(state.get("progress") or ""))
    finally:
        informer.stop()
        server.close()
