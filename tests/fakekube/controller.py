"""The fake cluster's controllers, advancing objects the way KubeVirt and CDI document:

- VirtualMachine (runStrategy Always/RerunOnFailure) -> its DataVolumes -> a VMI; VM
  ``printableStatus`` Provisioning/Starting/Running/Stopped, ``ready``, Ready condition.
- VMI phases Pending -> Scheduling -> Scheduled -> Running, each in
  ``status.phaseTransitionTimestamps``; ``nodeName``; a virt-launcher pod carrying the VMI's
  labels; the Ready condition once the guest process runs (virt-handler = ``GuestRunner``).
- VirtualMachineInstanceMigration phases Pending, Scheduling, Scheduled, PreparingTarget,
  TargetReady, Running, Succeeded/Failed, with the VMI's ``status.migrationState``;
  deleting an unfinished migration aborts it (abortRequested, abortStatus; unlike KubeVirt,
  which writes no abortStatus for a migration deleted before the hand-off: the backend's cancel
  is tested on the real control plane).
- DataVolume phases Pending -> ImportScheduled -> ImportInProgress -> Succeeded; the http
  source is really downloaded and measured (qemu-img) against the claim; a claim without access
  modes on a class whose StorageProfile has none, a failing download and a too-small claim end
  as CDI v1.66 reports them (see ``_dv_changed``); a VM whose DataVolume has an error is
  ``DataVolumeError`` (KubeVirt's ``HasDataVolumeErrors``).
"""

from __future__ import annotations

import heapq
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fakekube.guests import GuestRequest, GuestRunner, MigrationCancelled
from fakekube.proxy import NodePortProxy
from fakekube.store import Change, NotFound, Obj, Store, matches, now_rfc3339

VM = "kubevirt.io/v1/virtualmachines"
VMI = "kubevirt.io/v1/virtualmachineinstances"
VMIM = "kubevirt.io/v1/virtualmachineinstancemigrations"
POLICY = "migrations.kubevirt.io/v1alpha1/migrationpolicies"
DV = "cdi.kubevirt.io/v1beta1/datavolumes"
POD = "v1/pods"
SVC = "v1/services"
NODE = "v1/nodes"
NS = "v1/namespaces"
STORAGE_CLASS = "storage.k8s.io/v1/storageclasses"
STORAGE_PROFILE = "cdi.kubevirt.io/v1beta1/storageprofiles"
HOSTNAME = "kubernetes.io/hostname"
IMMEDIATE_BIND = "cdi.kubevirt.io/storage.bind.immediate.requested"
MIB = 1024 * 1024
FILESYSTEM_OVERHEAD = 0.055  # CDIConfig's default filesystemOverhead
MAX_IMPORTER_ATTEMPTS = 5


def _owner(obj: Obj, kind: str, api_version: str = "kubevirt.io/v1") -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _add_phase(status: Obj, phase: str) -> None:
    status["phase"] = phase
    status.setdefault("phaseTransitionTimestamps", []).append(
        {"phase": phase, "phaseTransitionTimestamp": now_rfc3339()})


def _dv_condition(status: Obj, ctype: str, value: str, message: str, reason: str) -> None:
    """A DataVolumeCondition as CDI writes it (datavolume/conditions.go updateCondition): the
    transition time moves only when the status does; fields of api/core/v1beta1/types.go."""
    conditions = status.setdefault("conditions", [])
    cond = next((c for c in conditions if c.get("type") == ctype), None)
    now = now_rfc3339()
    if cond is None:
        cond = {"type": ctype}
        conditions.append(cond)
    if cond.get("status") != value:
        cond["lastTransitionTime"] = now
    cond.update({"status": value, "lastHeartbeatTime": now, "message": message, "reason": reason})


def _data_volume_error(status: Obj) -> bool:
    """kubevirt v1.9.0 pkg/storage/types/dv.go HasDataVolumeErrors: phase Failed, or the Running
    condition False with reason Error or ImagePullFailed."""
    if status.get("phase") == "Failed":
        return True
    return any(c.get("type") == "Running" and c.get("status") == "False"
               and c.get("reason") in ("Error", "ImagePullFailed") for c in status.get("conditions") or [])


def _set_condition(status: Obj, ctype: str, value: str, reason: str = "") -> None:
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
    cond = {"type": ctype, "status": value, "lastTransitionTime": now_rfc3339(), "lastProbeTime": None}
    if reason:
        cond["reason"] = reason
    conditions.append(cond)
    status["conditions"] = conditions


class Controller:
    def __init__(self, store: Store, runner: GuestRunner, proxy: NodePortProxy, step_s: float = 0.02,
                 download_dir: Path | None = None) -> None:
        self.store = store
        self.runner = runner
        self.proxy = proxy
        self.step_s = step_s
        self.download_dir = download_dir
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-handler")
        self._cancel: dict[str, threading.Event] = {}  # migration name -> cancel flag
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="fake-controller", daemon=True)
        store.listeners.append(self._on_change)
        proxy.resolve = self._resolve_node_port
        self.migrations_enabled = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for flag in self._cancel.values():
            flag.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # scheduling -------------------------------------------------------------------------
    def later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._seq), fn))
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cv.wait(timeout)
                if self._stop:
                    return
                _, _, fn = heapq.heappop(self._queue)
            try:
                fn()
            except NotFound:
                pass  # the object went away meanwhile

    def _on_change(self, change: Change) -> None:
        handler = {VM: self._vm_changed, VMI: self._vmi_changed, VMIM: self._vmim_changed,
                   DV: self._dv_changed}.get(change.gvr)
        if handler is not None:
            self.later(0, lambda: handler(change))

    def _work(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except NotFound:
                pass
            except (OSError, RuntimeError, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        self._pool.submit(run)

    # VirtualMachine ---------------------------------------------------------------------
    def _vm_changed(self, change: Change) -> None:
        vm, ns = change.obj, change.namespace
        name = vm["metadata"]["name"]
        if change.type == "DELETED":
            for gvr in (VMI, DV):
                for item in self.store.list(gvr, ns)[0]:
                    owners = item["metadata"].get("ownerReferences") or []
                    if any(o.get("uid") == vm["metadata"]["uid"] for o in owners):
                        self.store.delete(gvr, ns, item["metadata"]["name"])
            return
        if change.type != "ADDED":
            return
        strategy = vm["spec"].get("runStrategy") or ("Always" if vm["spec"].get("running") else "Halted")
        if strategy not in ("Always", "RerunOnFailure"):
            self._vm_status(ns, name, "Stopped", ready=False)
            return
        pending_dvs = []
        for template in vm["spec"].get("dataVolumeTemplates") or []:
            dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                  "metadata": {**template.get("metadata", {}), "ownerReferences": [_owner(vm, "VirtualMachine")]},
                  "spec": template["spec"]}
            self.store.create(DV, ns, dv)
            pending_dvs.append(dv["metadata"]["name"])
        self._vm_status(ns, name, "Provisioning" if pending_dvs else "Starting", ready=False, created=False)
        self.later(self.step_s, lambda: self._start_vmi_when_ready(ns, name, pending_dvs))

    def _vm_status(self, ns: str, name: str, printable: str, ready: bool, created: bool | None = None) -> None:
        def mutate(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            status["printableStatus"] = printable
            status["ready"] = ready
            if created is not None:
                status["created"] = created
            _set_condition(status, "Ready", "True" if ready else "False")
        self.store.update(VM, ns, name, mutate)

    def _start_vmi_when_ready(self, ns: str, name: str, dvs: list[str]) -> None:
        vm = self.store.get(VM, ns, name)
        for dv in dvs:
            status = self.store.get(DV, ns, dv).get("status") or {}
            if _data_volume_error(status):
                # KubeVirt shows it and keeps reconciling (the importer may still recover)
                if (vm.get("status") or {}).get("printableStatus") != "DataVolumeError":
                    self._vm_status(ns, name, "DataVolumeError", ready=False)
                self.later(self.step_s * 5, lambda: self._start_vmi_when_ready(ns, name, dvs))
                return
            # kubevirt v1.9.0 pkg/virt-controller/watch/vm/vm.go handleDataVolumes: ready to start
            if status.get("phase") not in ("Succeeded", "WaitForFirstConsumer", "PendingPopulation"):
                self.later(self.step_s * 5, lambda: self._start_vmi_when_ready(ns, name, dvs))
                return
        template = vm["spec"]["template"]
        vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
               "metadata": {"name": name, "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                            "ownerReferences": [_owner(vm, "VirtualMachine")]},
               "spec": template["spec"]}
        self.store.create(VMI, ns, vmi)
        self._vm_status(ns, name, "Starting", ready=False, created=True)

    # VirtualMachineInstance -------------------------------------------------------------
    def _vmi_changed(self, change: Change) -> None:
        vmi, ns = change.obj, change.namespace
        name = vmi["metadata"]["name"]
        if change.type == "DELETED":
            self.runner.stop(name)
            for pod in self.store.list(POD, ns, f"kubevirt.io/created-by={vmi['metadata']['uid']}")[0]:
                self.store.delete(POD, ns, pod["metadata"]["name"])
            if self.store.exists(VM, ns, name):
                self._vm_status(ns, name, "Stopped", ready=False, created=False)
            return
        if change.type == "ADDED":
            self.store.update(VMI, ns, name, lambda o: _add_phase(o.setdefault("status", {}), "Pending"))
            self.later(self.step_s, lambda: self._schedule(ns, name))

    def _nodes(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.store.peek(NODE, None)
                if not (n.get("spec") or {}).get("unschedulable")]

    def _pick_node(self, selector: dict[str, str], exclude: str = "", preferred: str = "") -> str | None:
        load: dict[str, int] = dict.fromkeys(self._nodes(), 0)
        for vmi in self.store.peek(VMI, None):
            node = (vmi.get("status") or {}).get("nodeName")
            if node in load:
                load[node] += 1
        candidates = [n for n in load if n != exclude and selector.get(HOSTNAME, n) == n]
        return min(candidates, key=lambda n: (n != preferred, load[n], n)) if candidates else None

    def _schedule(self, ns: str, name: str) -> None:
        vmi = self.store.get(VMI, ns, name)
        node = self._pick_node(vmi["spec"].get("nodeSelector") or {}, preferred=_preferred_node(vmi["spec"]))
        if node is None:
            self.later(self.step_s * 10, lambda: self._schedule(ns, name))
            return
        self.store.update(VMI, ns, name, lambda o: _add_phase(o["status"], "Scheduling"))
        self._launcher_pod(vmi, ns, node)
        self.later(self.step_s, lambda: self._scheduled(ns, name, node))

    def _launcher_pod(self, vmi: Obj, ns: str, node: str) -> Obj:
        labels = dict(vmi["metadata"].get("labels") or {})
        labels.update({"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi["metadata"]["uid"],
                       "vm.kubevirt.io/name": vmi["metadata"]["name"]})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"virt-launcher-{vmi['metadata']['name']}-{uuid.uuid4().hex[:5]}",
                            "labels": labels, "ownerReferences": [_owner(vmi, "VirtualMachineInstance")]},
               "spec": {"nodeName": node, "containers": [{"name": "compute", "image": "virt-launcher"}]},
               "status": {"phase": "Running"}}
        return self.store.create(POD, ns, pod)

    def _scheduled(self, ns: str, name: str, node: str) -> None:
        def mutate(o: Obj) -> None:
            o["status"]["nodeName"] = node
            _add_phase(o["status"], "Scheduled")
            o["metadata"].setdefault("labels", {})["kubevirt.io/nodeName"] = node
        vmi = self.store.update(VMI, ns, name, mutate)
        spec = vmi["spec"]
        volumes = spec.get("volumes") or []
        root = next((v for v in volumes if v.get("name") == "rootdisk"), volumes[0] if volumes else {})
        image = (root.get("containerDisk") or {}).get("image") or (root.get("dataVolume") or {}).get("name", "")
        memory = ((spec["domain"].get("memory") or {}).get("guest")
                  or ((spec["domain"].get("resources") or {}).get("requests") or {}).get("memory") or "256Mi")
        scratch = sum(_mib(str((v.get("emptyDisk") or {}).get("capacity"))) for v in volumes if "emptyDisk" in v)
        req = GuestRequest(name, ns, node, str(image), int((spec["domain"].get("cpu") or {}).get("cores") or 1),
                           _mib(str(memory)), scratch)

        def handler() -> None:
            self.runner.start(req)
            self.later(0, lambda: self._running(ns, name))
        self._work(handler)

    def _running(self, ns: str, name: str) -> None:
        def mutate(o: Obj) -> None:
            _add_phase(o["status"], "Running")
            _set_condition(o["status"], "Ready", "True")
        self.store.update(VMI, ns, name, mutate)
        if self.store.exists(VM, ns, name):
            self._vm_status(ns, name, "Running", ready=True, created=True)

    # migrations -------------------------------------------------------------------------
    def _policy_for(self, vmi: Obj) -> Obj | None:
        labels = vmi["metadata"].get("labels") or {}
        for policy in self.store.list(POLICY, None)[0]:
            selector = ((policy["spec"].get("selectors") or {}).get("virtualMachineInstanceSelector")) or {}
            if selector and matches([(k, "=", v) for k, v in selector.items()], labels):
                return policy
        return None

    def _vmim_changed(self, change: Change) -> None:
        mig, ns = change.obj, change.namespace
        name = mig["metadata"]["name"]
        if change.type == "DELETED":
            flag = self._cancel.get(name)
            if flag is not None and not flag.is_set():
                flag.set()
            return
        if change.type != "ADDED":
            return
        self._cancel[name] = threading.Event()
        self.store.update(VMIM, ns, name, lambda o: _add_phase(o.setdefault("status", {}), "Pending"))
        self.later(self.step_s, lambda: self._migration_schedule(ns, name))

    def _mig_phase(self, ns: str, name: str, phase: str) -> bool:
        if self._cancel[name].is_set():
            return False
        self.store.update(VMIM, ns, name, lambda o: _add_phase(o["status"], phase))
        return True

    def _fail_migration(self, ns: str, name: str, vmi_name: str, reason: str) -> None:
        if self.store.exists(VMIM, ns, name):
            self.store.update(VMIM, ns, name, lambda o: _add_phase(o["status"], "Failed"))

        def mutate(o: Obj) -> None:
            state = o["status"].setdefault("migrationState", {})
            state.update({"failed": True, "failureReason": reason, "endTimestamp": now_rfc3339(),
                          "completed": False})
        if self.store.exists(VMI, ns, vmi_name):
            self.store.update(VMI, ns, vmi_name, mutate)

    def _migration_schedule(self, ns: str, name: str) -> None:
        mig = self.store.get(VMIM, ns, name)
        vmi_name = mig["spec"]["vmiName"]
        vmi = self.store.get(VMI, ns, vmi_name)
        if vmi["status"].get("phase") != "Running":
            self._fail_migration(ns, name, vmi_name, "VMI is not running")
            return
        source = vmi["status"]["nodeName"]
        target = self._pick_node(mig["spec"].get("addedNodeSelector") or {}, exclude=source)
        if not self._mig_phase(ns, name, "Scheduling"):
            return
        if target is None:
            self._fail_migration(ns, name, vmi_name, "no schedulable target node")
            return
        self._launcher_pod(vmi, ns, target)
        policy = self._policy_for(vmi)
        steps = ["Scheduled", "PreparingTarget", "TargetReady"]

        def advance() -> None:
            if not steps:
                self._migration_run(ns, name, vmi_name, mig["metadata"]["uid"], source, target, policy)
                return
            if self._mig_phase(ns, name, steps.pop(0)):
                self.later(self.step_s, advance)
            else:
                self._aborted(ns, vmi_name, mig["metadata"]["uid"], source, target)
        self.later(self.step_s, advance)

    def _migration_run(self, ns: str, name: str, vmi_name: str, uid: str, source: str, target: str,
                       policy: Obj | None) -> None:
        if not self._mig_phase(ns, name, "Running"):
            self._aborted(ns, vmi_name, uid, source, target)
            return
        spec = (policy or {}).get("spec") or {}
        postcopy = bool(spec.get("allowPostCopy"))
        bandwidth = spec.get("bandwidthPerMigration")

        def mutate(o: Obj) -> None:
            o["status"]["migrationState"] = {
                "migrationUid": uid, "sourceNode": source, "targetNode": target,
                "startTimestamp": now_rfc3339(), "mode": "PreCopy", "completed": False, "failed": False,
                **({"migrationPolicyName": policy["metadata"]["name"]} if policy else {}),
            }
        self.store.update(VMI, ns, vmi_name, mutate)
        flag = self._cancel[name]

        def handler() -> None:
            try:
                mode = self.runner.migrate(vmi_name, target, postcopy, _mib(str(bandwidth)) if bandwidth else None,
                                           flag)
            except MigrationCancelled:
                self.later(0, lambda: self._aborted(ns, vmi_name, uid, source, target))
                return
            except (OSError, RuntimeError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.later(0, lambda: self._fail_migration(ns, name, vmi_name, reason))
                return
            self.later(0, lambda: self._migrated(ns, name, vmi_name, uid, source, target, mode))
        self._work(handler)

    def _migrated(self, ns: str, name: str, vmi_name: str, uid: str, source: str, target: str, mode: str) -> None:
        def mutate(o: Obj) -> None:
            o["status"]["nodeName"] = target
            o["metadata"].setdefault("labels", {})["kubevirt.io/nodeName"] = target
            o["status"].pop("evacuationNodeName", None)
            state = o["status"]["migrationState"]
            state.update({"completed": True, "endTimestamp": now_rfc3339(), "mode": mode})
        self.store.update(VMI, ns, vmi_name, mutate)
        for pod in self.store.list(POD, ns, f"vm.kubevirt.io/name={vmi_name}")[0]:
            if pod["spec"]["nodeName"] == source:
                self.store.delete(POD, ns, pod["metadata"]["name"])
        if self.store.exists(VMIM, ns, name):
            self.store.update(VMIM, ns, name, lambda o: _add_phase(o["status"], "Succeeded"))

    def _aborted(self, ns: str, vmi_name: str, uid: str, source: str, target: str) -> None:
        def mutate(o: Obj) -> None:
            state = o["status"].setdefault("migrationState", {"migrationUid": uid, "sourceNode": source,
                                                             "targetNode": target})
            state.update({"abortRequested": True, "abortStatus": "Succeeded", "failed": True,
                          "completed": False, "endTimestamp": now_rfc3339(),
                          "failureReason": "migration aborted by deleting its VirtualMachineInstanceMigration"})
        if self.store.exists(VMI, ns, vmi_name):
            self.store.update(VMI, ns, vmi_name, mutate)
        for pod in self.store.list(POD, ns, f"vm.kubevirt.io/name={vmi_name}")[0]:
            if pod["spec"]["nodeName"] == target:
                self.store.delete(POD, ns, pod["metadata"]["name"])

    # DataVolumes ------------------------------------------------------------------------
    # CDI v1.66, as far as a fake can: the claim rendered from spec.storage and the class's
    # StorageProfile (pkg/controller/datavolume/util.go getDefaultVolumeAndAccessMode), a
    # standalone DataVolume on a WaitForFirstConsumer class waiting for a consumer unless it asks
    # for immediate binding, phases Pending -> ImportScheduled -> ImportInProgress -> Succeeded,
    # and a failing importer as CDI reports one: phase still ImportInProgress (only fatal errors
    # set Failed: datavolume/import-controller.go updateStatusPhase), the Running condition False
    # with reason "Error" and the importer's termination message, restartCount counting the
    # restarts (pkg/controller/util.go setAnnotationsFromPodWithPrefix; conditions.go).
    def _dv_changed(self, change: Change) -> None:
        if change.type != "ADDED":
            return
        dv, ns = change.obj, change.namespace
        name = dv["metadata"]["name"]
        spec = dv.get("spec") or {}
        storage = spec.get("storage") or {}
        claim_error = self._claim_error(storage)
        if claim_error is not None:
            # renderPvcSpec failed: no phase, Bound and Ready False with the event's reason and message
            # (datavolume/controller-base.go syncDataVolumeStatusPhaseWithEvent + updateConditions)
            self._dv_status(ns, name, None, bound=("False", claim_error, "ErrClaimNotValid"),
                            ready=("False", claim_error, "ErrClaimNotValid"), running=("False", "", ""))
            return
        owners = dv["metadata"].get("ownerReferences") or []
        consumed = any(o.get("kind") == "VirtualMachine" for o in owners)  # the VM's launcher pod consumes it
        immediate = (dv["metadata"].get("annotations") or {}).get(IMMEDIATE_BIND) == "true"
        pvc = f"PVC {name}"
        if self._binding_mode(storage) == "WaitForFirstConsumer" and not (consumed or immediate):
            self._dv_status(ns, name, "WaitForFirstConsumer", bound=("False", f"{pvc} Pending", "Pending"),
                            ready=("False", "", ""), running=("False", "", ""))
            return
        self._dv_status(ns, name, "Pending", bound=("False", f"{pvc} Pending", "Pending"),
                        ready=("False", "", ""), running=("False", "", ""))
        url = str(((spec.get("source") or {}).get("http") or {}).get("url") or "")
        request_mib = _mib(str(((storage.get("resources") or {}).get("requests") or {}).get("storage") or "0"))
        block = storage.get("volumeMode") == "Block"
        bound = ("True", f"{pvc} Bound", "Bound")
        attempts = [0]

        def importer() -> None:
            self.later(0, lambda: self._dv_status(ns, name, "ImportScheduled", bound=bound, ready=("False", "", ""),
                                                  running=("False", "", "")))
            time.sleep(self.step_s)
            self.later(0, lambda: self._dv_status(ns, name, "ImportInProgress", progress="0.00%", bound=bound,
                                                  ready=("False", "", "TransferRunning"),
                                                  running=("True", "", "Pod is running")))
            error = self._import(url, ns, name, request_mib, block)
            if error is None:
                self.later(0, lambda: self._dv_status(ns, name, "Succeeded", progress="100.0%", bound=bound,
                                                      ready=("True", "", ""),
                                                      running=("False", "Import Complete", "Completed")))
                return
            self.errors.append(f"import {name}: {error}")
            attempts[0] += 1
            restarts = attempts[0]  # the container's restartCount once kubelet restarts it (OnFailure)
            self.later(0, lambda: self._dv_status(ns, name, "ImportInProgress", progress="N/A", bound=bound,
                                                  ready=("False", "", ""), running=("False", error, "Error"),
                                                  restarts=restarts))
            if restarts < MAX_IMPORTER_ATTEMPTS and self.store.exists(DV, ns, name):
                time.sleep(self.step_s * 5 * restarts)  # kubelet's back-off, much shortened
                if self.store.exists(DV, ns, name):
                    self._work(importer)
        self._work(importer)

    def _dv_status(self, ns: str, name: str, phase: str | None, *, bound: tuple[str, str, str],
                   ready: tuple[str, str, str], running: tuple[str, str, str], progress: str = "N/A",
                   restarts: int | None = None) -> None:
        def mutate(o: Obj) -> None:
            status = o.setdefault("status", {})
            if phase is not None:
                status["phase"], status["progress"] = phase, progress
            if restarts is not None:
                status["restartCount"] = restarts
            for ctype, (value, message, reason) in (("Bound", bound), ("Ready", ready), ("Running", running)):
                _dv_condition(status, ctype, value, message, reason)
        self.store.update(DV, ns, name, mutate)

    def _storage_class(self, storage: Obj) -> Obj | None:
        classes = self.store.peek(STORAGE_CLASS, None)
        wanted = storage.get("storageClassName")
        for sc in classes:
            annotations = sc["metadata"].get("annotations") or {}
            if sc["metadata"]["name"] == wanted or (
                    not wanted and annotations.get("storageclass.kubernetes.io/is-default-class") == "true"):
                return sc
        return None

    def _binding_mode(self, storage: Obj) -> str:
        sc = self._storage_class(storage)
        return str((sc or {}).get("volumeBindingMode") or "Immediate")

    def _claim_error(self, storage: Obj) -> str | None:
        """renderPvcSpec's refusal for a claim without access modes (util.go getDefaultVolumeAndAccessMode)."""
        if storage.get("accessModes"):
            return None
        sc = self._storage_class(storage)
        if sc is None:
            return "no accessMode specified and StorageClass not found"
        profile = next((p for p in self.store.peek(STORAGE_PROFILE, None)
                        if p["metadata"]["name"] == sc["metadata"]["name"]), None)
        sets = ((profile or {}).get("status") or {}).get("claimPropertySets") or []
        if sets and sets[0].get("accessModes"):
            return None
        return f"no accessMode specified in StorageProfile {sc['metadata']['name']}"

    def _import(self, url: str, ns: str, name: str, request_mib: int, block: bool) -> str | None:
        """Download the image like CDI's http importer; its termination message on failure."""
        if not url:
            return None
        with tempfile.TemporaryDirectory(prefix="fake-cdi-") as tmp:
            dest = Path(tmp) / "disk.img"
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as fh:
                    while chunk := response.read(1 << 20):
                        fh.write(chunk)
            except urllib.error.HTTPError as exc:
                # importer: errorCannotConnectDataSource + http-datasource.go's status check
                return (f"Unable to connect to http data source: expected status code 200, got {exc.code}. "
                        f"Status: {exc.code} {exc.reason}")
            except (urllib.error.URLError, OSError) as exc:
                return f"Unable to connect to http data source: {exc}"
            info = subprocess.run(["qemu-img", "info", "--output=json", str(dest)], capture_output=True, text=True,
                                  check=False, timeout=60)
            if info.returncode != 0:
                return f"Unable to process data: {info.stderr.strip()}"
            size = int(json.loads(info.stdout)["virtual-size"])
            # the PVC's usable space: its size less CDI's filesystem overhead (5.5 %, none on Block);
            # pkg/image/qemu.go Validate's message, simplified by pkg/controller/util.go simplifyKnownMessage
            usable = int(request_mib * MIB * (1.0 if block else 1 - FILESYSTEM_OVERHEAD))
            if size > usable:
                return "DataVolume too small to contain image"
            if self.download_dir is not None:
                shutil.copyfile(dest, self.download_dir / f"{ns}-{name}.img")
        return None

    # kube-proxy -------------------------------------------------------------------------
    def _resolve_node_port(self, node_port: int) -> tuple[str, int] | None:
        for svc in self.store.peek(SVC, None):
            for port in (svc.get("spec") or {}).get("ports") or []:
                if port.get("nodePort") != node_port:
                    continue
                ns = svc["metadata"]["namespace"]
                selector = [(k, "=", v) for k, v in (svc["spec"].get("selector") or {}).items()]
                for vmi in self.store.peek(VMI, ns):
                    if matches(selector, vmi["metadata"].get("labels") or {}):
                        return self.runner.endpoint(vmi["metadata"]["name"], int(port.get("targetPort") or 0))
        return None


def _mib(quantity: str) -> int:
    q = quantity.strip()
    for suffix, factor in (("Gi", 1024), ("Mi", 1), ("G", 1000), ("M", 1)):
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return max(1, int(q) // (1024 * 1024))




def _preferred_node(spec: dict[str, Any]) -> str:
    """The hostname a preferred node affinity names (the scheduler's weight wins over spreading)."""
    terms = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution") or []
    for term in terms:
        for expr in (term.get("preference") or {}).get("matchExpressions") or []:
            if expr.get("key") == HOSTNAME and expr.get("operator") == "In" and expr.get("values"):
                return str(expr["values"][0])
    return ""
