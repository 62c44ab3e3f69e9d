"""The fake API server's object store: resourceVersions, label selectors, watch fan-out."""

from __future__ import annotations

import copy
import json
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
HISTORY = 200_000


def now_rfc3339() -> str:
    """Microsecond RFC 3339 (a real API server truncates metav1.Time to seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Conflict(Exception):
    pass


class NotFound(Exception):
    pass


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``a=b,c!=d,e`` -> [(key, op, value)]; ops: '=', '!=', 'exists', '!exists'."""
    out: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            out.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", ""))
        else:
            out.append((part, "exists", ""))
    return out


def matches(selector: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for key, op, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


@dataclass
class Watcher:
    gvr: str
    namespace: str | None
    selector: list[tuple[str, str, str]]
    events: queue.SimpleQueue[bytes | None] = field(default_factory=queue.SimpleQueue)


@dataclass(frozen=True)
class Change:
    type: str  # ADDED MODIFIED DELETED
    gvr: str
    namespace: str
    obj: Obj


class Store:
    def __init__(self, history: int = HISTORY) -> None:
        self.lock = threading.RLock()
        self.rv = 1000
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: deque[tuple[int, str, str, dict[str, str], bytes]] = deque(maxlen=history)
        self.watchers: list[Watcher] = []
        self.listeners: list[Callable[[Change], None]] = []

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, kind: str, gvr: str, ns: str, obj: Obj) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
        self.history.append((self.rv, gvr, ns, dict(labels), line))
        for w in self.watchers:
            if w.gvr == gvr and (w.namespace is None or w.namespace == ns) and matches(w.selector, labels):
                w.events.put(line)
        change = Change(kind, gvr, ns, copy.deepcopy(obj))
        for listener in self.listeners:
            listener(change)

    def create(self, gvr: str, ns: str, obj: Obj) -> Obj:
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (gvr, ns, meta["name"])
            if key in self.objects:
                raise Conflict(meta["name"])
            if ns:
                meta["namespace"] = ns
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self.objects[key] = obj
            self._emit("ADDED", gvr, ns, obj)
            return copy.deepcopy(obj)

    def get(self, gvr: str, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get((gvr, ns, name))
            if obj is None:
                raise NotFound(name)
            return copy.deepcopy(obj)

    def exists(self, gvr: str, ns: str, name: str) -> bool:
        with self.lock:
            return (gvr, ns, name) in self.objects

    def update(self, gvr: str, ns: str, name: str, mutate: Callable[[Obj], None]) -> Obj:
        """Apply ``mutate`` to a copy of the object and store it (one MODIFIED event)."""
        with self.lock:
            current = self.objects.get((gvr, ns, name))
            if current is None:
                raise NotFound(name)
            obj = copy.deepcopy(current)
            mutate(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[(gvr, ns, name)] = obj
            self._emit("MODIFIED", gvr, ns, obj)
            return copy.deepcopy(obj)

    def delete(self, gvr: str, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.pop((gvr, ns, name), None)
            if obj is None:
                raise NotFound(name)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            self._emit("DELETED", gvr, ns, obj)
            return copy.deepcopy(obj)

    def list(self, gvr: str, ns: str | None, selector: str = "") -> tuple[list[Obj], str]:
        sel = parse_selector(selector)
        with self.lock:
            items = [copy.deepcopy(o) for (g, n, _), o in sorted(self.objects.items())
                     if g == gvr and (ns is None or n == ns)
                     and matches(sel, (o.get("metadata") or {}).get("labels") or {})]
            return items, str(self.rv)

    def peek(self, gvr: str, ns: str | None) -> list[Obj]:
        """The stored objects themselves (no copies): for read-only scans by the fake's controllers."""
        with self.lock:
            return [o for (g, n, _), o in self.objects.items() if g == gvr and (ns is None or n == ns)]

    def watch(self, gvr: str, ns: str | None, selector: str, rv: str) -> Watcher | None:
        """Register a watcher; replay history after ``rv``. None means 410 Gone."""
        sel = parse_selector(selector)
        with self.lock:
            w = Watcher(gvr, ns, sel)
            if rv and rv != "0":
                since = int(rv)
                if self.history and since < self.history[0][0] - 1 and len(self.history) == self.history.maxlen:
                    return None  # 410 Gone: the client must relist
                for ev_rv, g, n, labels, line in self.history:
                    if ev_rv > since and g == gvr and (ns is None or n == ns) and matches(sel, labels):
                        w.events.put(line)
            self.watchers.append(w)
            return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            if w in self.watchers:
                self.watchers.remove(w)

    def close_watchers(self) -> None:
        with self.lock:
            for w in self.watchers:
                w.events.put(None)
