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
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from lab.kubevirt.resources import Kube, Obj, Resource

log = logging.getLogger("lab.kubevirt")

Handler = Callable[[str, Obj, float], None]
_GONE = 410


class Informer(threading.Thread):
    def __init__(self, kube: Kube, res: Resource, namespace: str, selector: str, handler: Handler,
                 watch_timeout_s: int = 60, idle_timeout_s: float = 2.0) -> None:
        super().__init__(name=f"informer-{res.plural}-{namespace}", daemon=True)
        self.kube, self.res, self.namespace, self.selector = kube, res, namespace, selector
        self.handler = handler
        self.watch_timeout_s = watch_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self.events = 0
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self._lock = threading.Lock()

    def stop(self, join_timeout: float = 5.0) -> None:
        self._stopped.set()
        deadline = time.monotonic() + join_timeout
        while self.is_alive() and threading.current_thread() is not self and time.monotonic() < deadline:
            self._interrupt()
            self.join(0.05)

    def _interrupt(self) -> None:
        """Unblock the watch's pending read (the stream may not have sent its request yet)."""
        with self._lock:
            w = self._watch
        if w is None:
            return
        w.stop()  # type: ignore[no-untyped-call]
        resp = getattr(w, "_resp", None)
        shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3: unblocks a read from another thread
        if callable(shutdown):
            shutdown()

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
                _request_timeout=(10, self.idle_timeout_s),
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
        except (ProtocolError, ReadTimeoutError):
            # a quiet watch times out on the client side after idle_timeout_s and reconnects
            # from the last resourceVersion; that also bounds how long stop() waits.
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
