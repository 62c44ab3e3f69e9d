"""Watch-based informers: list once, then follow watch events; relist on 410 Gone.

One ``Informer`` thread per resource kind and namespace, filtered by the run's label. Its
handler gets ``(event_type, object, received_at)`` for every object, synchronously in the
watch thread, so the handler must be quick (it only records timestamps).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, ProtocolError

from lab.kubevirt.resources import Kube, Obj, Resource

log = logging.getLogger("lab.kubevirt")

Handler = Callable[[str, Obj, float], None]
_GONE = 410


class Informer(threading.Thread):
    def __init__(self, kube: Kube, res: Resource, namespace: str, selector: str, handler: Handler,
                 watch_timeout_s: int = 60) -> None:
        super().__init__(name=f"informer-{res.plural}-{namespace}", daemon=True)
        self.kube, self.res, self.namespace, self.selector = kube, res, namespace, selector
        self.handler = handler
        self.watch_timeout_s = watch_timeout_s
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self.events = 0
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self._lock = threading.Lock()

    def stop(self, join_timeout: float = 5.0) -> None:
        self._stopped.set()
        with self._lock:
            if self._watch is not None:
                self._watch.stop()  # type: ignore[no-untyped-call]
        if self.is_alive() and threading.current_thread() is not self:
            self.join(join_timeout)

    def _relist(self) -> str:
        items, rv = self.kube.list_with_version(self.res, self.namespace, self.selector)
        now = time.time()
        for item in items:
            self.handler("SYNC", item, now)
        return rv

    def run(self) -> None:
        try:
            rv = self._relist()
            self.synced.set()
            while not self._stopped.is_set():
                rv = self._follow(rv)
        except (ApiException, HTTPError, OSError) as exc:
            if not self._stopped.is_set():
                self.error = exc
                log.warning("watch on %s stopped: %s", self.res.plural,
                            self.kube.conn.redactor.redact(str(exc).splitlines()[0] if str(exc) else repr(exc)))
        finally:
            self.synced.set()

    def _follow(self, rv: str) -> str:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        with self._lock:
            if self._stopped.is_set():
                return rv
            self._watch = w
        custom = self.kube.custom
        try:
            stream = w.stream(  # type: ignore[no-untyped-call]
                custom.list_namespaced_custom_object, self.res.group, self.res.version, self.namespace,
                self.res.plural, label_selector=self.selector, resource_version=rv,
                timeout_seconds=self.watch_timeout_s, allow_watch_bookmarks=True, deserialize=False,
            )
            for event in stream:
                received = time.time()
                kind: str = event["type"]
                obj: dict[str, Any] = event["object"]
                if kind == "ERROR":
                    if obj.get("code") == _GONE:
                        return self._relist()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                self.handler(kind, obj, received)
        except ProtocolError:
            if not self._stopped.is_set():
                log.debug("watch on %s reconnecting", self.res.plural)
        except ApiException as exc:
            if exc.status == _GONE:
                return self._relist()
            raise
        finally:
            with self._lock:
                self._watch = None
        return rv
