"""Watch-based informers: list once, then follow watch events; relist on 410 Gone.

One ``Informer`` thread per resource kind and namespace, filtered by the run's label. Its
handler gets ``(event_type, object, received_at)`` for every object, synchronously in the
watch thread, so the handler must be quick (it only records timestamps).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, ReadTimeoutError

from virtproof.lab.kubevirt.resources import Kube, Obj, Resource

log = logging.getLogger("virtproof.lab.kubevirt")

Handler = Callable[[str, Obj, float], None]
_GONE = 410
_RELIST = "<relist>"  # _follow's answer when the watch expired (410 Gone): list again


class Informer(threading.Thread):
    def __init__(self, kube: Kube, res: Resource, namespace: str, selector: str, handler: Handler,
                 watch_timeout_s: int = 60, idle_timeout_s: float = 10.0) -> None:
        super().__init__(name=f"informer-{res.plural}-{namespace}", daemon=True)
        self.kube, self.res, self.namespace, self.selector = kube, res, namespace, selector
        self.handler = handler
        self.watch_timeout_s = watch_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self.events = 0
        self._stopped = threading.Event()
        self._resp: Any = None
        self._failures = 0
        self._lock = threading.Lock()

    def stop(self, join_timeout: float = 5.0) -> None:
        self._stopped.set()
        deadline = time.monotonic() + join_timeout
        while self.is_alive() and threading.current_thread() is not self and time.monotonic() < deadline:
            self._interrupt()
            self.join(0.05)

    def _interrupt(self) -> None:
        """Unblock the watch's pending read (urllib3 >= 2.3 ``shutdown``, else close the socket)."""
        with self._lock:
            resp = self._resp
        if resp is None:
            return
        shutdown = getattr(resp, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except OSError:
                # The reader closed the socket between our look at it and the shutdown (EBADF):
                # nothing left to unblock. Seen on the real server's TLS watch during close().
                pass

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(5.0, 0.1 * 2.0 ** min(self._failures, 6)))

    def _relist(self) -> str:
        items, rv = self.kube.list_with_version(self.res, self.namespace, self.selector)
        now = time.time()
        for item in items:
            self.handler("SYNC", item, now)
        return rv

    def run(self) -> None:
        try:
            rv = self._relist()  # the first list's errors are the caller's (open() reports them)
            self.synced.set()
            while not self._stopped.is_set():
                if rv == _RELIST:
                    try:
                        rv = self._relist()
                    except (MaxRetryError, ReadTimeoutError, ProtocolError):
                        self._stopped.wait(self._backoff())
                        continue
                rv = self._follow(rv)
        except (ApiException, HTTPError, OSError) as exc:
            if not self._stopped.is_set():
                self.error = exc
                log.warning("watch on %s stopped: %s", self.res.plural,
                            self.kube.conn.redactor.redact(str(exc).splitlines()[0] if str(exc) else repr(exc)))
        finally:
            self.synced.set()

    def _follow(self, rv: str) -> str:
        """One watch request from ``rv``; returns the resourceVersion to resume from.

        The response is read line by line here rather than through ``kubernetes.watch.Watch``:
        its ERROR handling needs deserialized events (a KeyError otherwise), and holding the
        response lets ``stop()`` unblock a pending read."""
        with self._lock:
            if self._stopped.is_set():
                return rv
        try:
            resp: Any = self.kube.custom.list_namespaced_custom_object(
                self.res.group, self.res.version, self.namespace, self.res.plural,
                label_selector=self.selector, resource_version=rv, watch=True,
                timeout_seconds=self.watch_timeout_s, allow_watch_bookmarks=True,
                _preload_content=False, _request_timeout=(10, self.idle_timeout_s),
            )
        except ApiException as exc:
            if exc.status == _GONE:
                return _RELIST
            raise
        except (MaxRetryError, ReadTimeoutError, ProtocolError) as exc:
            # a slow or restarting API server: try again from the same resourceVersion
            log.debug("watch on %s: %s; retrying", self.res.plural, type(exc).__name__)
            self._stopped.wait(self._backoff())
            return rv
        self._failures = 0
        with self._lock:
            self._resp = resp
        try:
            status = getattr(resp, "status", 200)
            if isinstance(status, int) and not 200 <= status <= 299:
                raise ApiException(status=status, reason=f"watch {self.res.plural}: HTTP {status}")
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                received = time.time()
                try:
                    event = json.loads(line)
                except ValueError:
                    # A line torn by our own shutdown() (stop/_interrupt) or by a broken stream:
                    # neither is the server's event. Resume from the last resourceVersion seen
                    # (on the real server's TLS watch this crashed the informer's thread).
                    if not self._stopped.is_set():
                        log.debug("watch on %s: unreadable event line; reconnecting", self.res.plural)
                    break
                kind: str = event["type"]
                obj: dict[str, Any] = event["object"]
                if kind == "ERROR":
                    if obj.get("code") == _GONE:
                        return _RELIST
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                self.handler(kind, obj, received)
                if self._stopped.is_set():
                    break
        except (ProtocolError, ReadTimeoutError):
            # a quiet watch times out on the client side after idle_timeout_s and reconnects
            # from the last resourceVersion; that also bounds how long stop() waits.
            if not self._stopped.is_set():
                log.debug("watch on %s reconnecting", self.res.plural)
        finally:
            with self._lock:
                self._resp = None
            resp.close()
            resp.release_conn()
        return rv
