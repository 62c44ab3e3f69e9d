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

from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt.informer import Informer
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.resources import DATAVOLUME, Obj
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


def import_disk(p: KubeVirtPlatform, disk: Path, name: str, *, advertise: str, size: str = "2Gi",
                bind_address: str = "0.0.0.0", timeout: float = 900.0) -> ImportResult:
    """Serve ``disk``, create a DataVolume importing it, wait for Succeeded (watch, not poll)."""
    require(p, Capability.DISK_IMPORT)
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
        body = manifests.data_volume(name, p.namespace, p.config.run_id,
                                     DiskSource(http_url=server.url, size=size))
        try:
            p.kube.create(DATAVOLUME, body, p.namespace)
        except ApiException as exc:
            raise PlatformError(f"creating DataVolume {name}: {p._api_error(exc)}") from None
        with cond:
            finished = cond.wait_for(lambda: state.get("phase") in ("Succeeded", "Failed") or state.get("deleted"),
                                     timeout)
        phase = str(state.get("phase") or "none")
        if not finished or phase != "Succeeded":
            raise PlatformError(f"DataVolume {name} import ended in phase {phase} after {time.time() - started:.0f} s")
        return ImportResult(name, phase, time.time() - started, str(state.get("progress") or ""))
    finally:
        informer.stop()
        server.close()
