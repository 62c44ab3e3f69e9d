"""Disk import through CDI: standalone DataVolumes (V2V) and a VM's ``dataVolumeTemplates``.

V2V: the harness serves a converted disk over HTTP and CDI imports it into a DataVolume
(``source.http``); a VM then boots from that DataVolume. The HTTP server binds
``bind_address`` (an address the cluster's importer pods can reach, e.g. the host's address on
the kind network) and serves exactly one file under a random path.

``lab.images`` http images become a VM's ``dataVolumeTemplates``: ``template_source`` sizes and
places them as ``import_disk`` does (the image's virtual size, the StorageProfile's access
modes), and ``watch_templates`` ends a VM's wait with CDI's own message when its import fails.
"""

from __future__ import annotations

import http.server
import logging
import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt.informer import Handler, Informer
from virtproof.lab.kubevirt.manifests import DiskSource
from virtproof.lab.kubevirt.resources import DATAVOLUME, STORAGE_PROFILE, VM_LABEL, Obj
from virtproof.lab.kubevirt.storage import (
    StorageDefaults,
    failure_of,
    http_virtual_size,
    profile_defaults,
    request_for,
    virtual_size,
)
from virtproof.lab.kubevirt.timeline import Recorder
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
                first, last = 0, size - 1
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if ranged and int(ranged.group(1)) < size:  # one range, as storage.http_virtual_size asks
                    first = int(ranged.group(1))
                    last = min(size - 1, int(ranged.group(2) or size - 1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(last - first + 1))
                self.end_headers()
                with open(served.path, "rb") as fh:
                    fh.seek(first)
                    remaining = last - first + 1
                    while remaining > 0 and (chunk := fh.read(min(remaining, 1 << 20))):
                        self.wfile.write(chunk)
                        remaining -= len(chunk)

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
        schemas = p.schemas()  # the cluster's own CDI document where it publishes one
        if schemas.covers(body) and (problems := schemas.validate(body)):
            raise PlatformError(f"DataVolume {name} does not validate against "
                                f"{schemas.origin(DATAVOLUME.api_version)}: {'; '.join(problems[:5])}")
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


# per platform: image name -> its resolved DiskSource; the platforms whose DataVolumes are watched
_resolved: weakref.WeakKeyDictionary[KubeVirtPlatform, dict[str, DiskSource]] = weakref.WeakKeyDictionary()
_watched: weakref.WeakSet[KubeVirtPlatform] = weakref.WeakSet()
_resolve_lock = threading.Lock()


def template_source(p: KubeVirtPlatform, image: str, source: DiskSource) -> DiskSource:
    """``source`` as a VM's ``dataVolumeTemplates`` entry needs it (an http image; any other is
    returned as it is): sized from the image's virtual size unless the scenario gave
    ``disk_size``, access and volume mode where the class's StorageProfile leaves them open (as
    ``import_disk``). No immediate-bind annotation: the VM's launcher pod is the first consumer
    on a WaitForFirstConsumer class, and KubeVirt starts the VMI while the DataVolume waits for
    it (kubevirt v1.9.0 pkg/virt-controller/watch/vm/vm.go handleDataVolumes: Succeeded,
    WaitForFirstConsumer and PendingPopulation count as ready). Resolved once per image."""
    if not source.http_url:
        return source
    with _resolve_lock:
        done = _resolved.setdefault(p, {}).get(image)
        if done is not None:
            return done
        if not p.cluster_facts.cdi_version:
            raise PlatformError(f"image {image!r} is imported over http by CDI, which this cluster lacks "
                                "(no Available CDI resource); use a container_disk image")
        size = source.size or request_for(http_virtual_size(source.http_url))
        modes, volume_mode = source.access_modes, source.volume_mode
        if not modes:
            defaults = _storage_for(p, source.storage_class)
            modes, volume_mode = defaults.access_modes, volume_mode or defaults.volume_mode
        resolved = replace(source, size=size, access_modes=modes, volume_mode=volume_mode)
        _resolved[p][image] = resolved
        log.info("image %s: DataVolume template %s, access modes %s", image, size, ",".join(modes) or "(profile's)")
        watch_templates(p)
        return resolved


def template_failure_handler(recorder: Recorder) -> Handler:
    """An informer handler marking the VM of a failing template DataVolume failed, with CDI's
    message. The template's labels name the VM: virt-controller copies them onto the DataVolume
    (kubevirt v1.9.0 pkg/storage/types/dv.go GenerateDataVolumeFromTemplate)."""

    def on_dv(kind: str, obj: Obj, received: float) -> None:
        if kind == "DELETED":
            return
        meta = obj.get("metadata") or {}
        vm = (meta.get("labels") or {}).get(VM_LABEL)
        why = failure_of(obj.get("status") or {})
        if not vm or why is None:
            return
        with recorder.cond:
            record = recorder.vms.get(str(vm))
            if record is not None and not record.failure:
                record.failure = f"DataVolume {meta.get('name')} import failed: {why}"
                recorder.cond.notify_all()

    return on_dv


def watch_templates(p: KubeVirtPlatform) -> None:
    """Follow the run's DataVolumes (once per platform; stopped by ``p.close()``), so that a VM
    whose template import fails stops waiting with CDI's message. Needs list and watch on
    datavolumes (the optional disk-import permissions); without them a failing import waits out
    the VM's timeout, as before."""
    if p in _watched or Capability.DISK_IMPORT not in p.capabilities:
        return
    informer = Informer(p.kube, DATAVOLUME, p.namespace, p.selector, template_failure_handler(p.recorder))
    informer.start()
    p._informers.append(informer)
    _watched.add(p)
    informer.synced.wait(30)
