"""List+watch informers with a local store, and the work queue the agent's controllers share.

This is client-go's pattern (``tools/cache`` Reflector + Store, ``util/workqueue``) in small:
one thread per watched collection lists once, then follows the watch from the list's
resourceVersion, relisting on 410 Gone; every change lands in the ``Store`` and is handed to
the informer's handler, which only enqueues keys. Controllers read objects from the store,
never from the server, so an idle object costs nothing and a busy one costs one write per real
change. The queue deduplicates keys (ten events for one pod are one sync), hands each key to
one worker at a time, and takes delayed adds (``add_after``) for retries and timers.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, Query

log = logging.getLogger("virtproof.lab.simnodes")

Handler = Callable[[str, Obj | None, Obj | None], None]  # (event type, old, new)
_GONE = 410


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _rv(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Store:
    """Objects by key, newest resourceVersion wins (writes the agent made land here at once)."""

    def __init__(self) -> None:
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def put(self, obj: Obj) -> tuple[Obj | None, bool]:
        """Store ``obj`` unless the store holds a newer version; (previous, stored)."""
        key = key_of(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is not None and _rv(old) > _rv(obj) > 0:
                return old, False
            self._objects[key] = obj
            return old, True

    def remove(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.pop(key, None)

    def replace_all(self, objs: list[Obj]) -> tuple[list[tuple[Obj | None, Obj]], list[Obj]]:
        """After a relist: (changed or added as (old, new), removed)."""
        fresh = {key_of(o): o for o in objs}
        with self._lock:
            removed = [o for k, o in self._objects.items() if k not in fresh]
            changed = [(self._objects.get(k), o) for k, o in fresh.items() if _rv(self._objects.get(k)) != _rv(o)]
            self._objects = fresh
        return changed, removed


class Informer(threading.Thread):
    """Keeps ``store`` in step with one collection; calls ``handler`` for every change."""

    def __init__(self, kube: Kube, path: str, handler: Handler, query: Query = (), name: str = "",
                 idle_timeout: float = 15.0) -> None:
        super().__init__(name=f"informer-{name or path.rsplit('/', 1)[-1]}", daemon=True)
        self.kube, self.path, self.handler, self.query = kube, path, handler, tuple(query)
        self.store = Store()
        self.synced = threading.Event()
        self.events = 0
        self.relists = 0
        self.idle_timeout = idle_timeout
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        failures = 0
        rv: str | None = None
        while not self._stopped.is_set():
            try:
                if rv is None:
                    rv = self._list()
                    self.synced.set()
                rv = self._watch(rv)
                failures = 0
            except ApiError as exc:
                if exc.status == _GONE:
                    rv = None
                    continue
                failures += 1
                wait = min(5.0, 0.2 * 2 ** min(failures, 5))
                if failures in (1, 5) or failures % 50 == 0:
                    log.warning("%s: %s; retrying in %.1f s", self.name, str(exc).splitlines()[0], wait)
                self._stopped.wait(wait)
            except Exception:  # a bug in a handler must not end the informer silently
                log.exception("%s: unexpected error; relisting", self.name)
                rv = None
                self._stopped.wait(1.0)

    def _list(self) -> str:
        # resourceVersion "0": served from the API server's watch cache, as client-go's Reflector lists
        answer = self.kube.get(self.path, [*self.query, ("resourceVersion", "0")])
        items = answer.get("items") or []
        rv = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        self.relists += 1
        changed, removed = self.store.replace_all(items)
        for old, new in changed:
            self.handler("ADDED" if old is None else "MODIFIED", old, new)
        for gone in removed:
            self.handler("DELETED", gone, None)
        return rv

    def _watch(self, rv: str) -> str:
        query = [*self.query, ("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", 300)]
        lines: Iterator[bytes] = self.kube.watch_lines(self.path, query, self.idle_timeout)
        try:
            for line in lines:
                if self._stopped.is_set():
                    break
                event = json.loads(line)
                kind = str(event.get("type"))
                obj: Obj = event.get("object") or {}
                if kind == "ERROR":
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                self._apply(kind, obj)
        except ApiError as exc:
            if exc.status == 0 and "Timeout" in exc.reason:
                return rv  # a quiet watch: reconnect from where it was
            raise
        except (OSError, ValueError) as exc:
            log.debug("%s: watch ended (%s); resuming", self.name, type(exc).__name__)
        except Exception as exc:  # urllib3 read timeouts and protocol errors surface here
            if type(exc).__module__.startswith("urllib3"):
                return rv
            raise
        return rv

    def _apply(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            old = self.store.remove(key_of(obj))
            self.handler("DELETED", old or obj, None)
            return
        old, stored = self.store.put(obj)
        if stored:
            self.handler("ADDED" if old is None else "MODIFIED", old, obj)


class WorkQueue:
    """Deduplicating queue of keys with delayed adds; a key is processed by one worker at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Hashable] = []
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()  # re-added while processing
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._cond.notify()

    def get(self) -> Hashable | None:
        """The next key (None once closed); call ``done(key)`` after processing it."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key = heapq.heappop(self._delayed)
                    if key in self._processing:
                        self._dirty.add(key)
                    elif key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._queued.add(key)
                    self._queue.append(key)
                    self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._delayed)


def run_workers(queue: WorkQueue, sync: Callable[[Any], None], count: int, name: str) -> list[threading.Thread]:
    """Start ``count`` threads that take keys from ``queue`` and call ``sync`` on each."""

    def work() -> None:
        while True:
            key = queue.get()
            if key is None:
                return
            try:
                sync(key)
            except Exception:
                log.exception("sync %s failed; retrying in 1 s", key)
                queue.add_after(key, 1.0)
            finally:
                queue.done(key)

    threads = [threading.Thread(target=work, name=f"{name}-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads
