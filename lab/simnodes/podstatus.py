"""The pod status a kubelet reports, computed from the pod and what "ran" (pure functions).

Followed from Kubernetes v1.34.4 ``pkg/kubelet``:

- ``kubelet_pods.go`` ``generateAPIPodStatus``: conditions not owned by the kubelet are kept as
  they are; the kubelet appends PodReadyToStartContainers, Initialized, Ready, ContainersReady
  and PodScheduled (``types/pod_status.go`` ``PodConditionsByKubelet``); hostIP/hostIPs from the
  node's address; the phase from ``getPhase`` (restartPolicy Never: all containers exited 0 is
  Succeeded, any other exit code Failed; running is Running).
- ``status/generate.go``: ``GenerateContainersReadyCondition`` (terminal phases give False with
  reason PodCompleted / PodFailed), ``GeneratePodReadyCondition`` (readiness gates: a missing or
  non-True gate condition gives False, reason ReadinessGatesNotReady, with the kubelet's message),
  ``GeneratePodInitializedCondition`` (True, reason PodCompleted once Succeeded).
- ``status/status_manager.go`` ``updateStatusInternal``: ``updateLastTransitionTime`` keeps a
  condition's lastTransitionTime while its status is unchanged, else stamps now; startTime is
  set once; conditions carry ``observedGeneration`` (PodObservedGenerationTracking is Beta and on
  in 1.34: ``podutil.CalculatePodConditionObservedGeneration`` returns the pod's generation), as
  does ``status.observedGeneration``. ``syncPod`` sends the change as a strategic merge patch of
  ``pods/status`` carrying ``metadata.uid`` (``statusutil.PatchPodStatus``).
- ``imageID``: the runtime's ``repo@sha256:...`` digest. virt-controller refuses to build a
  migration target pod without one ("no reproducible image digest", spike REPORT §3.8).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from virtproof.lab.simnodes.times import metav1_time

Obj = dict[str, Any]

KUBELET_CONDITIONS = ("PodScheduled", "Ready", "Initialized", "ContainersReady", "PodReadyToStartContainers",
                      "PodResizeInProgress", "PodResizePending")
PHASES_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ContainerExit:
    exit_code: int
    finished_at: float
    reason: str = ""  # "" -> Completed for 0, Error otherwise (what containerd reports)


@dataclass(frozen=True)
class PodRun:
    """What the node did with a pod: when its containers started, and whether they exited."""

    started_at: float
    host_ip: str
    pod_ip: str | None
    exited: ContainerExit | None = None


def image_id(image: str) -> str:
    """The digest form a container runtime reports for ``image`` (stable for a given name)."""
    if "@sha256:" in image:
        return image
    slash = image.rfind("/")
    colon = image.rfind(":")
    repo = image[:colon] if colon > slash else image
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def container_id(pod_uid: str, name: str) -> str:
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{name}".encode()).hexdigest()


def phase_of(run: PodRun) -> str:
    if run.exited is None:
        return "Running"
    return "Succeeded" if run.exited.exit_code == 0 else "Failed"


def _condition(ctype: str, status: str, generation: int, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": ctype, "status": status, "observedGeneration": generation, "lastProbeTime": None}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _ready_condition(pod: Obj, conditions: list[Obj], containers_ready: Obj, generation: int) -> Obj:
    if containers_ready["status"] != "True":
        return _condition("Ready", containers_ready["status"], generation, containers_ready.get("reason", ""),
                          containers_ready.get("message", ""))
    by_type = {c.get("type"): c for c in conditions}
    unready = []
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        ctype = str(gate.get("conditionType"))
        cond = by_type.get(ctype)
        if cond is None:
            unready.append(f"corresponding condition of pod readiness gate \"{ctype}\" does not exist.")
        elif cond.get("status") != "True":
            unready.append(f"the status of pod readiness gate \"{ctype}\" is not \"True\", but {cond.get('status')}")
    if unready:
        return _condition("Ready", "False", generation, "ReadinessGatesNotReady", ", ".join(unready))
    return _condition("Ready", "True", generation)


def _container_status(pod_uid: str, container: Obj, run: PodRun, init: bool) -> Obj:
    name = str(container.get("name"))
    image = str(container.get("image", ""))
    cid = container_id(pod_uid, name)
    started = metav1_time(run.started_at)
    state: Obj
    if init:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started,
                                "containerID": cid}}
        ready, is_started = True, False
    elif run.exited is None:
        state = {"running": {"startedAt": started}}
        ready, is_started = True, True
    else:
        reason = run.exited.reason or ("Completed" if run.exited.exit_code == 0 else "Error")
        state = {"terminated": {"exitCode": run.exited.exit_code, "reason": reason, "startedAt": started,
                                "finishedAt": metav1_time(run.exited.finished_at), "containerID": cid}}
        ready, is_started = False, False
    return {"name": name, "state": state, "lastState": {}, "ready": ready, "restartCount": 0, "image": image,
            "imageID": image_id(image), "containerID": cid, "started": is_started}


def desired_status(pod: Obj, run: PodRun, now: float) -> Obj:
    """The whole status the kubelet would hold for ``pod`` after ``run``, times carried over."""
    old: Obj = pod.get("status") or {}
    spec: Obj = pod.get("spec") or {}
    meta: Obj = pod.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    uid = str(meta.get("uid", ""))
    phase = phase_of(run)
    if old.get("phase") in PHASES_TERMINAL:
        phase = str(old["phase"])  # pods never leave a terminal phase (generateAPIPodStatus)
    terminal = phase in PHASES_TERMINAL

    keep = [copy.deepcopy(c) for c in old.get("conditions") or [] if c.get("type") not in KUBELET_CONDITIONS]
    sandbox = _condition("PodReadyToStartContainers", "False" if terminal else "True", generation)
    initialized = _condition("Initialized", "True", generation, "PodCompleted" if phase == "Succeeded" else "")
    if terminal:
        containers_ready = _condition("ContainersReady", "False", generation,
                                      "PodCompleted" if phase == "Succeeded" else "PodFailed")
    else:
        containers_ready = _condition("ContainersReady", "True", generation)
    ready = _ready_condition(pod, keep, containers_ready, generation)
    scheduled = _condition("PodScheduled", "True", generation)
    fresh = [sandbox, initialized, ready, containers_ready, scheduled]
    old_by_type = {c.get("type"): c for c in old.get("conditions") or []}
    stamp = metav1_time(now)
    for cond in fresh:  # status_manager.updateLastTransitionTime
        previous = old_by_type.get(cond["type"])
        same = previous is not None and previous.get("status") == cond["status"]
        cond["lastTransitionTime"] = previous.get("lastTransitionTime") if same and previous else stamp

    status: Obj = {
        "phase": phase,
        "conditions": keep + fresh,
        "hostIP": run.host_ip,
        "hostIPs": [{"ip": run.host_ip}],
        "startTime": old.get("startTime") or metav1_time(run.started_at),
        "containerStatuses": [_container_status(uid, c, run, False) for c in spec.get("containers") or []],
        "observedGeneration": generation,
    }
    if spec.get("initContainers"):
        status["initContainerStatuses"] = [_container_status(uid, c, run, True) for c in spec["initContainers"]]
    pod_ip = old.get("podIP") or run.pod_ip  # pod IPs are immutable once set
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if old.get("qosClass"):
        status["qosClass"] = old["qosClass"]
    return status


def _projection(status: Obj) -> str:
    """What the kubelet compares to decide whether a status changed (times of unchanged conditions
    are carried over, so a plain comparison of the kubelet-owned fields is enough)."""
    fields = {k: status.get(k) for k in ("phase", "hostIP", "podIP", "startTime", "observedGeneration")}
    fields["conditions"] = sorted(
        json.dumps({k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")},
                    sort_keys=True) for c in status.get("conditions") or [] if c.get("type") in KUBELET_CONDITIONS
    )
    for key in ("containerStatuses", "initContainerStatuses"):
        fields[key] = [
            {k: s.get(k) for k in ("name", "state", "ready", "started", "imageID", "containerID")}
            for s in status.get(key) or []
        ]
    return json.dumps(fields, sort_keys=True)


def status_patch(pod: Obj, desired: Obj) -> Obj | None:
    """The strategic merge patch of ``pods/status`` that brings ``pod`` to ``desired``; None if
    nothing the kubelet owns would change. Container states that end are nulled explicitly (a
    strategic merge patch merges maps, so ``running`` would otherwise stay beside ``terminated``)."""
    current: Obj = pod.get("status") or {}
    if _projection(current) == _projection(desired):
        return None
    body = copy.deepcopy(desired)
    body["conditions"] = [c for c in body["conditions"] if c.get("type") in KUBELET_CONDITIONS]
    for cond in body["conditions"]:  # a reason or message that went away must be removed
        cond.setdefault("reason", None)
        cond.setdefault("message", None)
    for key in ("containerStatuses", "initContainerStatuses"):
        for entry in body.get(key) or []:
            state = entry["state"]
            for kind in ("waiting", "running", "terminated"):
                state.setdefault(kind, None)
    body.pop("qosClass", None)
    uid = (pod.get("metadata") or {}).get("uid")
    return {"metadata": {"uid": uid}, "status": body}
