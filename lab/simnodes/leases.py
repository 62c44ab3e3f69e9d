"""Keeping the agent's Nodes alive: the kubelet's Lease and node status, virt-handler's heartbeat.

One scheduler thread holds every node's next due times (leases every 10 s with the lease
controller's 4 % jitter, the node status check every 10 s — nodeStatusUpdateFrequency — with a
patch only when ``nodestatus.node_status_patch`` says so, virt-handler's heartbeat every minute
with jitter 1.2) and hands due work to a small pool, so 100 nodes cost 10 lease updates a
second and nothing else in a steady state. Node objects are read from the agent's node
informer, never fetched per tick. The node labeller's labels (the machine types the guests
run, ``machine-type.node.kubevirt.io/<type>``) ride on the first heartbeat.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from virtproof.lab.simnodes.informer import Store
from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, path_of
from virtproof.lab.simnodes.nodestatus import (
    HEARTBEAT_JITTER,
    HEARTBEAT_S,
    LEASE_RENEW_S,
    NODE_STATUS_REPORT_S,
    heartbeat_patch,
    lease_body,
    node_status_patch,
)

log = logging.getLogger("virtproof.lab.simnodes")

NODE_STATUS_CHECK_S = 10.0
MAX_LEASE_RETRIES = 5


class NodeKeeper:
    def __init__(self, nodes: list[str], kubelets: dict[str, Kube], handlers: Callable[[str], Kube],
                 node_store: Store, pool: Executor, machine_types: tuple[str, ...]) -> None:
        self.nodes, self.kubelets, self.handlers = nodes, kubelets, handlers
        self.node_store, self.pool, self.machine_types = node_store, pool, machine_types
        self._latest_lease: dict[str, Obj] = {}
        self._last_report: dict[str, float] = {}
        self._report_delay: dict[str, float] = {}
        self._labelled: set[str] = set()
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lease_updates = 0
        self.status_patches = 0
        self.heartbeats = 0

    # --- one node's work -------------------------------------------------------------------

    def renew_lease(self, node: str) -> None:
        """``lease.controller.sync``: update from the last written copy, else get or create."""
        kube = self.kubelets[node]
        path = path_of("coordination.k8s.io", "v1", "leases", "kube-node-lease", node)
        base = self._latest_lease.get(node)
        for _ in range(MAX_LEASE_RETRIES):
            now = time.time()
            node_obj = self.node_store.get(node)
            node_uid = ((node_obj or {}).get("metadata") or {}).get("uid")
            try:
                if base is None:
                    try:
                        base = kube.get(path)
                    except ApiError as exc:
                        if exc.status != 404:
                            raise
                        created = kube.create(path_of("coordination.k8s.io", "v1", "leases", "kube-node-lease"),
                                              lease_body(node, node_uid, now))
                        self._latest_lease[node] = created
                        self.lease_updates += 1
                        return
                self._latest_lease[node] = kube.replace(path, lease_body(node, node_uid, now, base))
                self.lease_updates += 1
                return
            except ApiError as exc:
                if exc.status in (404, 409):
                    base = None
                    continue
                log.warning("lease of %s: %s", node, exc)
                return
        log.warning("lease of %s: %d conflicts in a row", node, MAX_LEASE_RETRIES)

    def check_status(self, node: str) -> None:
        node_obj = self.node_store.get(node)
        if node_obj is None:
            return
        now = time.time()
        last = self._last_report.get(node)
        force = last is None or now - last >= NODE_STATUS_REPORT_S + self._report_delay.get(node, 0.0)
        patch = node_status_patch(node_obj, now, force)
        if patch is None:
            return
        try:
            answer = self.kubelets[node].patch(path_of("", "v1", "nodes", name=node, sub="status"), patch)
        except ApiError as exc:
            log.warning("node status of %s: %s", node, exc)
            return
        self.node_store.put(answer)
        self.status_patches += 1
        changed = last is None or not force
        self._last_report[node] = now
        # the first report after a change gets a random delay of +-50 % (calculateDelay)
        self._report_delay[node] = NODE_STATUS_REPORT_S * (random.random() - 0.5) if changed else 0.0

    def heartbeat(self, node: str, schedulable: bool = True) -> None:
        patch = heartbeat_patch(time.time(), schedulable)
        if node not in self._labelled and schedulable:
            for machine in self.machine_types:
                patch["metadata"]["labels"][f"machine-type.node.kubevirt.io/{machine}"] = "true"
        try:
            answer = self.handlers(node).patch(path_of("", "v1", "nodes", name=node), patch)
        except ApiError as exc:
            log.warning("virt-handler heartbeat of %s: %s", node, exc)
            return
        self._labelled.add(node)
        self.node_store.put(answer)
        self.heartbeats += 1

    # --- the scheduler ---------------------------------------------------------------------

    def _schedule(self, when: float, kind: str, node: str) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, node))

    def start(self) -> None:
        """First heartbeats now (in parallel), then the periodic loop."""
        futures = []
        for node in self.nodes:
            futures.append(self.pool.submit(self._first, node))
        for future in futures:
            future.result()
        now = time.monotonic()
        for i, node in enumerate(self.nodes):
            spread = LEASE_RENEW_S * i / max(1, len(self.nodes))
            self._schedule(now + spread + LEASE_RENEW_S, "lease", node)
            self._schedule(now + spread + NODE_STATUS_CHECK_S, "status", node)
            self._schedule(now + HEARTBEAT_S * (1 + random.random() * HEARTBEAT_JITTER), "heartbeat", node)
        self._thread = threading.Thread(target=self._loop, name="node-keeper", daemon=True)
        self._thread.start()

    def _first(self, node: str) -> None:
        self.renew_lease(node)
        self.check_status(node)
        self.heartbeat(node)

    def _loop(self) -> None:
        jobs: dict[str, Callable[[str], None]] = {"lease": self.renew_lease, "status": self.check_status,
                                                   "heartbeat": self.heartbeat}
        while not self._stop.is_set():
            when, _, kind, node = self._heap[0]
            delay = when - time.monotonic()
            if delay > 0:
                self._stop.wait(min(delay, 1.0))
                continue
            heapq.heappop(self._heap)
            self.pool.submit(self._guarded, jobs[kind], node)
            if kind == "lease":
                interval = LEASE_RENEW_S * (1 + random.random() * 0.04)  # wait.JitterUntil(..., 0.04, sliding)
            elif kind == "status":
                interval = NODE_STATUS_CHECK_S
            else:
                interval = HEARTBEAT_S * (1 + random.random() * HEARTBEAT_JITTER)
            self._schedule(time.monotonic() + interval, kind, node)

    def _guarded(self, job: Callable[[str], None], node: str) -> None:
        try:
            job(node)
        except Exception:
            log.exception("node keeper: %s of %s", getattr(job, "__name__", job), node)

    def stop(self, mark_unschedulable: bool = True) -> None:
        """Stop; like virt-handler on exit, label the nodes kubevirt.io/schedulable=false."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        if mark_unschedulable:
            for node in self.nodes:
                try:
                    path = path_of("", "v1", "nodes", name=node)
                    self.handlers(node).patch(path, heartbeat_patch(time.time(), False))
                except ApiError:
                    pass

