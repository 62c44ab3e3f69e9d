"""The kubelet's part for the pods bound to the agent's nodes.

Pods of two kinds are run: virt-launcher pods (their "containers" are the VMI's domain, which
virt-handler starts) and the agent's own virt-handler pods. Any other pod bound to these nodes
is left alone (no container runtime here): it stays Pending, and its deletion is not confirmed.

A pod is "started" when first seen bound to a node (containers running, init containers
completed, the pod IP assigned), reported as the kubelet reports it (``podstatus``), and
finished when its containers exit: a launcher exits when its domain is gone (shut down, moved
away by a migration, never delivered to a failed migration target, crashed). A pod with a
deletionTimestamp is killed (the domain behind it stopped), reported terminal, then deleted
with grace period 0 and a UID precondition by the node's own identity, as
``status_manager.syncPod`` does once ``canBeDeleted``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from virtproof.lab.simnodes.config import NodeConfig
from virtproof.lab.simnodes.guests import Guests
from virtproof.lab.simnodes.informer import Store
from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, path_of
from virtproof.lab.simnodes.podstatus import ContainerExit, PodRun, desired_status, status_patch
from virtproof.lab.simnodes.runtime import LAUNCHER, PodRecord, Runtime, guest_name, owner_vmi, pod_kind
from virtproof.lab.simnodes.times import parse_time

log = logging.getLogger("virtproof.lab.simnodes")


class Kubelet:
    def __init__(self, nodes: dict[str, NodeConfig], clients: dict[str, Kube], pods: Store, runtime: Runtime,
                 guests: Guests, ops: Executor, enqueue: Callable[[str, str], None]) -> None:
        self.nodes, self.clients, self.pods, self.runtime = nodes, clients, pods, runtime
        self.guests, self.ops, self.enqueue = guests, ops, enqueue
        self._ignored: set[str] = set()

    # --- starting --------------------------------------------------------------------------

    def _start(self, pod: Obj, node: str, kind: str) -> PodRecord:
        meta, status = pod["metadata"], pod.get("status") or {}
        started = time.time()
        for cs in status.get("containerStatuses") or []:  # a pod this node already runs (agent restart)
            running = (cs.get("state") or {}).get("running") or {}
            started = parse_time(running.get("startedAt")) or started
        record = PodRecord(uid=str(meta["uid"]), key=f"{meta['namespace']}/{meta['name']}", node=node, kind=kind,
                           started_at=started, pod_ip=status.get("podIP"))
        if kind == LAUNCHER:
            owner = owner_vmi(pod)
            if owner is not None:
                record.vmi_key, record.vmi_uid = owner
                record.guest = guest_name(meta["namespace"], owner[0].split("/", 1)[1], owner[1])
                if record.pod_ip is None:
                    record.pod_ip = self.guests.address(record.guest)
        else:
            record.pod_ip = self.nodes[node].address  # hostNetwork
        with self.runtime.lock:
            self.runtime.pods[record.uid] = record
        log.info("pod %s started on %s (ip %s)", record.key, node, record.pod_ip)
        return record

    # --- the sync loop ---------------------------------------------------------------------

    def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None:
            self._forget(key)
            return
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node not in self.nodes:
            return
        kind = pod_kind(pod)
        if kind is None:
            if key not in self._ignored:
                self._ignored.add(key)
                log.info("pod %s on %s is not KubeVirt's: no container runtime for it here", key, node)
            return
        meta = pod["metadata"]
        stale = self.runtime.pod_by_key(key)
        if stale is not None and stale.uid != str(meta["uid"]):
            self._forget(key)  # the pod was deleted and made again under the same name
        with self.runtime.lock:
            record = self.runtime.pods.get(str(meta["uid"]))
        if record is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return  # finished before this agent started
            record = self._start(pod, node, kind)
        if meta.get("deletionTimestamp") and record.exited is None:
            self._kill(record)
        self._report(pod, record)
        if meta.get("deletionTimestamp") and record.exited is not None:
            self._delete(pod, record)

    def _report(self, pod: Obj, record: PodRecord) -> None:
        run = PodRun(record.started_at, self.nodes[record.node].address, record.pod_ip, record.exited)
        patch = status_patch(pod, desired_status(pod, run, time.time()))
        if patch is None:
            return
        meta = pod["metadata"]
        path = path_of("", "v1", "pods", meta["namespace"], meta["name"], "status")
        try:
            answer = self.clients[record.node].patch(path, patch)
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        self.pods.put(answer)
        if record.vmi_key:
            self.enqueue("vmi", record.vmi_key)

    def _kill(self, record: PodRecord) -> None:
        """Stop the pod's containers: the domain behind a launcher pod goes with it."""
        if record.stopping:
            return
        with self.runtime.lock:
            guest = self.runtime.guests.get(record.vmi_uid or "")
            runs_guest = guest is not None and guest.pod_uid == record.uid and guest.state in ("starting", "running")
            record.stopping = True
        if record.kind != LAUNCHER or guest is None:
            record.exited = ContainerExit(0, time.time())
            return
        if not runs_guest:
            # a migration target whose migration is in flight: its qemu goes with the pod
            if guest.migrating and self.guests.kill_destination(guest.name):
                log.info("pod %s deleted during the migration: destination killed", record.key)
            record.exited = ContainerExit(0, time.time())
            return
        guest.state = "stopping"

        def stop() -> None:
            try:
                self.guests.stop(guest.name)
            finally:
                with self.runtime.lock:
                    guest.state = "stopped"
                    record.exited = ContainerExit(0, time.time())
                log.info("pod %s deleted: guest %s stopped", record.key, guest.name)
                self.enqueue("pod", record.key)
                self.enqueue("vmi", guest.vmi_key)

        self.ops.submit(stop)

    def _delete(self, pod: Obj, record: PodRecord) -> None:
        meta = pod["metadata"]
        path = path_of("", "v1", "pods", meta["namespace"], meta["name"])
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        try:
            self.clients[record.node].delete(path, body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        log.info("pod %s removed", record.key)

    def _forget(self, key: str) -> None:
        record = self.runtime.pod_by_key(key)
        if record is None:
            self._ignored.discard(key)
            return
        with self.runtime.lock:
            self.runtime.pods.pop(record.uid, None)
            still_used = record.guest is not None and any(
                p.guest == record.guest for p in self.runtime.pods.values()
            )
        if record.guest and not still_used:
            self.guests.release_address(record.guest)
        if record.vmi_key:
            self.enqueue("vmi", record.vmi_key)

    # --- what virt-handler tells the kubelet -------------------------------------------------

    def launcher_exited(self, pod_uid: str, exit_code: int = 0) -> None:
        """The launcher process of ``pod_uid`` ended (its domain is gone from this pod)."""
        with self.runtime.lock:
            record = self.runtime.pods.get(pod_uid)
            if record is None or record.exited is not None:
                return
            record.exited = ContainerExit(exit_code, time.time())
        self.enqueue("pod", record.key)
