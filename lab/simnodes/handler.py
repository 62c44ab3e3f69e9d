"""virt-handler's part for the VMIs on the agent's nodes: domains, status, and migrations.

Followed from KubeVirt v1.9.0 ``pkg/virt-handler``. Each sync computes, from the VMI in the
informer's store and what the node runs, the one next write the real controllers would make,
makes it with the owning node's virt-handler identity (a whole-VMI ``Update``: VMIs have no
status subresource, and the kubevirt-handler role has no ``get``), and queues the VMI again:

- ``vm.go`` (the VM controller; VMIs whose ``status.nodeName`` is ours): a Scheduled VMI whose
  launcher pod runs gets its domain started; once it runs, ``updateVMIStatus`` reports it
  Running (``vmistatus.running_status``). A VMI being deleted has its domain shut down, then
  Succeeded. A domain that died is Failed (``calculateVmPhaseForStatusReason``), as is a Running
  VMI whose domain this node does not have.
- ``migration-target.go`` (label ``kubevirt.io/migrationTargetNodeName`` is ours): once the
  target pod runs, the target publishes targetNodeAddress and its listener ports; it marks the
  domain detected when the incoming domain exists; when the migration ended with the domain
  running here it acks (nodeName and the nodeName label move here), then finalizes
  (completed), then cleans up (the target label, the create-migration-target annotation).
- ``migration-source.go`` (``status.nodeName`` and ``sourceNode`` are ours): when the target's
  ports appear, the launcher starts the migration (startTimestamp, mode PreCopy); mode changes
  (PostCopy, Paused) are copied; a failed or aborted migration is reported failed, completed,
  with endTimestamp, failureReason and abortStatus, which makes virt-controller fail the VMIM.
  ``abortRequested`` (the VMIM deleted while Running) cancels the qemu migration.

The kubelet side learns what happened to each launcher: a source launcher exits once its domain
moved away, a failed migration's target launcher exits after cleanup, a crashed domain's exits 1.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from virtproof.lab.platform import MigrationResult
from virtproof.lab.simnodes.config import NodeConfig
from virtproof.lab.simnodes.guests import GuestError, Guests
from virtproof.lab.simnodes.informer import Store
from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, path_of
from virtproof.lab.simnodes.kubelet import Kubelet
from virtproof.lab.simnodes.migration import LauncherOptions, MonitorState, quantity_bytes
from virtproof.lab.simnodes.runtime import GuestRecord, MigrationJob, Runtime, guest_name
from virtproof.lab.simnodes.vmistatus import (
    MIGRATION_TARGET_LABEL,
    DomainFacts,
    final_status,
    running_status,
    set_phase,
    source_failed,
    source_progress,
    target_ack,
    target_cleanup,
    target_domain_detected,
    target_finalized,
    target_prepared,
)

log = logging.getLogger("virtproof.lab.simnodes")

FINAL = ("Succeeded", "Failed")
LIBVIRT_DIRECT_PORT = 49152  # migrationproxy.LibvirtDirectMigrationPort
LIBVIRT_BLOCK_PORT = 49153


def guest_shape(vmi: Obj) -> tuple[int, int]:
    """(vCPUs, memory MiB) of the VMI's domain."""
    domain = ((vmi.get("spec") or {}).get("domain")) or {}
    cpu = domain.get("cpu") or {}
    cpus = int(cpu.get("sockets") or 1) * int(cpu.get("cores") or 1) * int(cpu.get("threads") or 1)
    requests = (domain.get("resources") or {}).get("requests") or {}
    memory = (domain.get("memory") or {}).get("guest") or requests.get("memory")
    mib = math.ceil(quantity_bytes(memory) / (1024 * 1024)) if memory else 256
    return max(1, cpus), max(64, mib)


class Handler:
    def __init__(self, nodes: dict[str, NodeConfig], clients: Callable[[str], Kube], vmis: Store, runtime: Runtime,
                 guests: Guests, kubelet: Kubelet, ops: Executor, enqueue: Callable[[str, str], None],
                 enqueue_after: Callable[[str, str, float], None], instant: bool) -> None:
        self.nodes, self.clients, self.vmis, self.runtime = nodes, clients, vmis, runtime
        self.guests, self.kubelet, self.ops = guests, kubelet, ops
        self.enqueue, self.enqueue_after, self.instant = enqueue, enqueue_after, instant
        self._ports = itertools.count(42000)
        self.writes = 0

    # --- writing ---------------------------------------------------------------------------

    def _put(self, node: str, vmi: Obj) -> bool:
        meta = vmi["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        path = path_of("kubevirt.io", "v1", "virtualmachineinstances", meta["namespace"], meta["name"])
        try:
            answer = self.clients(node).replace(path, vmi)
        except ApiError as exc:
            if exc.status == 409:
                self.enqueue_after("vmi", key, 0.2)  # the informer brings the newer copy
            elif exc.status == 404:
                pass
            else:
                log.warning("updating VMI %s as virt-handler on %s: %s", key, node, exc.message[:300])
                self.enqueue_after("vmi", key, 2.0)
            return False
        self.writes += 1
        self.vmis.put(answer)
        self.enqueue("vmi", key)
        return True

    # --- the sync --------------------------------------------------------------------------

    def sync(self, key: str) -> None:
        vmi = self.vmis.get(key)
        if vmi is None:
            self._gone(key)
            return
        meta, status = vmi["metadata"], vmi.get("status") or {}
        uid = str(meta["uid"])
        with self.runtime.lock:
            guest = self.runtime.guests.get(uid)
        phase = status.get("phase")
        if phase in FINAL:
            self._finished(guest, phase)
            return
        state = status.get("migrationState") or {}
        if state.get("migrationUid") and self._migration(vmi, state, guest):
            return
        node = status.get("nodeName")
        if node not in self.nodes:
            return
        if meta.get("deletionTimestamp"):
            self._shutdown(vmi, node, guest)
            return
        now = time.time()
        if guest is None:
            if phase == "Scheduled":
                self._start(vmi, node)
            elif phase == "Running":
                log.info("VMI %s runs on %s but its domain is not here: Failed", key, node)
                self._put(node, final_status(vmi, "Failed", now))
            return
        if guest.state == "running" and guest.node == node:
            new = running_status(vmi, self._facts(vmi, guest), now)
            if new.get("status") != status:
                self._put(node, new)
        elif guest.state in ("crashed", "failed"):
            log.info("VMI %s: domain %s (%s): Failed", key, guest.state, guest.error or "qemu exited")
            if self._put(node, final_status(vmi, "Failed", now)):
                self.kubelet.launcher_exited(guest.pod_uid, 1)

    def _facts(self, vmi: Obj, guest: GuestRecord) -> DomainFacts:
        domain = ((vmi.get("spec") or {}).get("domain")) or {}
        requests = (domain.get("resources") or {}).get("requests") or {}
        memory = (domain.get("memory") or {}).get("guest") or requests.get("memory")
        return DomainFacts(self.guests.machine_types[0], guest.ip, guest.mac, memory)

    def _start(self, vmi: Obj, node: str) -> None:
        meta = vmi["metadata"]
        uid, key = str(meta["uid"]), f"{meta['namespace']}/{meta['name']}"
        pod = self.runtime.running_launcher(uid, node)
        if pod is None:
            return  # the kubelet has not started the launcher yet; its event requeues us
        name = guest_name(meta["namespace"], meta["name"], uid)
        record = GuestRecord(uid, key, name, node, pod.uid)
        with self.runtime.lock:
            if uid in self.runtime.guests:
                return
            self.runtime.guests[uid] = record
        cpus, mib = guest_shape(vmi)

        def start() -> None:
            try:
                started = self.guests.start(name, node, cpus, mib)
            except (GuestError, OSError) as exc:
                log.warning("VMI %s: guest %s did not start: %s", key, name, exc)
                with self.runtime.lock:
                    record.state, record.error = "failed", str(exc)
            else:
                with self.runtime.lock:
                    record.ip, record.mac, record.running_at = started.ip, started.mac, started.running_at
                    if record.state == "starting":
                        record.state = "running"
                if not self.instant:
                    log.info("VMI %s: guest %s running on %s at %s", key, name, node, started.ip)
            self.enqueue("vmi", key)

        if self.instant:
            start()
        else:
            self.ops.submit(start)

    def _stop(self, guest: GuestRecord, then: Callable[[], None]) -> None:
        with self.runtime.lock:
            if guest.state not in ("starting", "running"):
                return
            guest.state = "stopping"

        def stop() -> None:
            try:
                self.guests.stop(guest.name)
            finally:
                with self.runtime.lock:
                    guest.state = "stopped"
                then()

        if self.instant:
            stop()
        else:
            self.ops.submit(stop)

    def _shutdown(self, vmi: Obj, node: str, guest: GuestRecord | None) -> None:
        meta = vmi["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if guest is not None and guest.state in ("starting", "running") and not guest.migrating:
            self._stop(guest, lambda: self.enqueue("vmi", key))
            return
        if guest is not None and guest.state == "stopping":
            return
        if (vmi.get("status") or {}).get("phase") == "Running":
            new = final_status(vmi, "Succeeded", time.time())  # domain shut down: Succeeded
            if self._put(node, new) and guest is not None:
                self.kubelet.launcher_exited(guest.pod_uid, 0)
        elif guest is not None:
            self.kubelet.launcher_exited(guest.pod_uid, 0)

    def _finished(self, guest: GuestRecord | None, phase: str) -> None:
        """A final VMI: its domain must be gone and its launcher exited."""
        if guest is None:
            return
        if guest.state in ("starting", "running"):
            self._stop(guest, lambda: self.enqueue("vmi", guest.vmi_key))
            return
        if guest.state == "stopping":
            return
        self.kubelet.launcher_exited(guest.pod_uid, 0 if phase == "Succeeded" else 1)
        with self.runtime.lock:
            self.runtime.guests.pop(guest.vmi_uid, None)

    def _gone(self, key: str) -> None:
        with self.runtime.lock:
            guests = [g for g in self.runtime.guests.values() if g.vmi_key == key]
            jobs = [j for j in self.runtime.migrations.values() if j.vmi_key == key]
        for job in jobs:
            job.monitor.abort_requested.set()
        for guest in guests:
            if guest.state in ("starting", "running"):
                self._stop(guest, lambda g=guest: self.kubelet.launcher_exited(g.pod_uid, 0))  # type: ignore[misc]
            else:
                with self.runtime.lock:
                    self.runtime.guests.pop(guest.vmi_uid, None)
        with self.runtime.lock:
            for job in jobs:
                if job.finished:
                    self.runtime.migrations.pop(job.uid, None)

    # --- migrations ------------------------------------------------------------------------

    def _migration(self, vmi: Obj, state: Obj, guest: GuestRecord | None) -> bool:
        """Carry the VMI's migration one step; False once it needs nothing more (normal sync)."""
        meta, status = vmi["metadata"], vmi["status"]
        labels = meta.get("labels") or {}
        uid = str(state["migrationUid"])
        src, tgt = state.get("sourceNode"), state.get("targetNode")
        mine_src, mine_tgt = src in self.nodes, tgt in self.nodes
        target_here = mine_tgt and labels.get(MIGRATION_TARGET_LABEL) == tgt
        with self.runtime.lock:
            job = self.runtime.migrations.get(uid)
        done = bool(state.get("completed") or state.get("failed"))
        now = time.time()

        if job is not None and job.finished and job.result is not None:
            if job.ok:
                if status.get("nodeName") != tgt and target_here:
                    new = target_ack(vmi, str(tgt), job.end, job.started, job.end, job.monitor.mode)
                    if self._put(str(tgt), new):
                        self._moved(job, guest, vmi)
                    return True
                if not state.get("completed") and target_here:
                    self._put(str(tgt), target_finalized(vmi))
                    return True
            elif not state.get("failed") and mine_src:
                new = source_failed(vmi, job.started, job.end, job.monitor.mode, job.failure_reason,
                                    job.abort_status if job.monitor.abort_status else "")
                if job.guest_lost:
                    set_phase(new, "Failed", now)
                if self._put(str(src), new):
                    self._failed(job, guest, vmi)
                return True
        if done:
            if job is not None and not job.finished:
                job.monitor.abort_requested.set()  # virt-controller gave up (e.g. the target pod went)
                return True
            if target_here and state.get("endTimestamp"):
                if self._put(str(tgt), target_cleanup(vmi)) and state.get("failed"):
                    target = self.runtime.running_launcher(str(meta["uid"]), str(tgt), state.get("targetPod"))
                    if target is not None:
                        self.kubelet.launcher_exited(target.uid, 0)  # SignalTargetPodCleanup
                return True
            with self.runtime.lock:
                if job is not None:
                    self.runtime.migrations.pop(uid, None)
            return False

        if target_here and not state.get("targetNodeAddress"):
            pod = self.runtime.running_launcher(str(meta["uid"]), str(tgt), state.get("targetPod"))
            if pod is not None:
                ports = {str(next(self._ports)): 0, str(next(self._ports)): LIBVIRT_DIRECT_PORT}
                if status.get("migrationMethod") == "BlockMigration":
                    ports[str(next(self._ports))] = LIBVIRT_BLOCK_PORT
                self._put(str(tgt), target_prepared(vmi, self.nodes[str(tgt)].address, ports))
            return True
        if job is None and mine_src and status.get("nodeName") == src and guest is None:
            return False  # the source domain is gone (an agent restart): the VM controller fails the VMI
        if job is None:
            ready = mine_src and status.get("nodeName") == src and state.get("targetDirectMigrationNodePorts")
            if ready and not state.get("abortRequested") and guest is not None and guest.state == "running":
                job = self._start_migration(vmi, state, guest)
                self._put(str(src), source_progress(vmi, job.started, "PreCopy"))
            return True
        if state.get("abortRequested") and not job.monitor.abort_requested.is_set():
            log.info("VMI %s: migration %s abort requested", job.vmi_key, uid)
            job.monitor.abort_requested.set()
        if target_here and job.monitor.domain_detected and not state.get("targetNodeDomainDetected"):
            self._put(str(tgt), target_domain_detected(vmi))
            return True
        if mine_src and not job.finished and state.get("mode") != job.monitor.mode:
            self._put(str(src), source_progress(vmi, job.started, job.monitor.mode))
        return True

    def _start_migration(self, vmi: Obj, state: Obj, guest: GuestRecord) -> MigrationJob:
        meta = vmi["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        options = LauncherOptions.from_vmi(vmi)
        monitor = MonitorState(options, on_change=lambda: self.enqueue("vmi", key))
        job = MigrationJob(str(state["migrationUid"]), key, guest.name, str(state["sourceNode"]),
                           str(state["targetNode"]), str(state.get("targetPod") or ""), guest.pod_uid, options,
                           monitor)
        job.started = monitor.started = time.time()
        with self.runtime.lock:
            self.runtime.migrations[job.uid] = job
            guest.migrating = True
        log.info("VMI %s: migration %s %s -> %s (acceptable %d s, post-copy %s, bandwidth %s MiB/s)", key, job.uid,
                 job.source, job.target, options.acceptable_completion_s, options.allow_post_copy,
                 options.bandwidth_mibps or "unlimited")

        def run() -> None:
            try:
                result = self.guests.migrate(guest.name, job.target, options, monitor)
            except Exception as exc:  # report it as the launcher would, never leave the VMIM hanging
                log.exception("migration of %s", key)
                now = time.time()
                result = MigrationResult(guest.name, job.source, job.target, False, "precopy", now, now, 0.0,
                                         error=str(exc))
            if result.ok:  # the guest answers from the target pod from now on (the proxy's view)
                target = self.runtime.running_launcher(guest.vmi_uid, job.target, job.target_pod or None)
                with self.runtime.lock:
                    if target is not None:
                        guest.pod_uid = target.uid
            job.result = result
            job.guest_lost = not result.ok and "guest lost" in (result.error or "")
            job.finished = True
            if not self.instant:
                log.info("VMI %s: migration %s %s in %.2f s (%s)%s", key, job.uid,
                         "completed" if result.ok else "failed", result.total_s, monitor.mode,
                         "" if result.ok else f": {result.error}")
            self.enqueue("vmi", key)

        if self.instant:
            run()
        else:
            threading.Thread(target=run, name=f"migrate-{guest.name}", daemon=True).start()
        return job

    def _moved(self, job: MigrationJob, guest: GuestRecord | None, vmi: Obj) -> None:
        """The target owns the domain now: the source launcher exits."""
        if guest is not None:
            with self.runtime.lock:
                guest.node = job.target
                guest.migrating = False
        self.kubelet.launcher_exited(job.source_pod, 0)

    def _failed(self, job: MigrationJob, guest: GuestRecord | None, vmi: Obj) -> None:
        if guest is None:
            return
        with self.runtime.lock:
            guest.migrating = False
            if job.guest_lost:
                guest.state, guest.error = "crashed", "the source qemu exited during the migration"
        if job.guest_lost:
            self.kubelet.launcher_exited(guest.pod_uid, 1)
