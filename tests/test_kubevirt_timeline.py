"""The KubeVirt backend's clocks (issue 12, items 5 and 11): watch events fed to the real
``Recorder`` as the informers deliver them, with the cluster's clock an hour off this host's, so
any span that mixed the two clocks would be off by an hour.

- Phase, condition and creation times are metav1.Time: the cluster's clock, whole seconds
  (``resolution_s`` 1). What the harness observed (the watch event's arrival) is its own
  ``<event>_observed`` series on this host's clock; a span never starts on one clock and ends on
  the other (``Timeline.span``, ``START_EVENT`` in lab/platform.py).
- kube-burner's VMReady is the time kube-burner *observed* the VM's Ready condition
  (``vmReady = time.Now().UTC()`` in ``handleUpdateVM``, kube-burner pkg/measurements/vmi_latency.go)
  minus the VM's creationTimestamp; the Ready condition's own lastTransitionTime is not used.
- Our VMI Ready measure (the VMI's Ready condition lastTransitionTime) is not kube-burner's method,
  so it never appears in ``vm_latencies()`` (published as ``vmi_latency.<name>_ms``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from virtproof.instruments.latency import ORDER
from virtproof.lab.kubevirt.timeline import Recorder
from virtproof.lab.platform import Timeline

SKEW = 3600.0  # the cluster's clock runs an hour ahead of this host's
LOCAL_T0 = 1_760_000_000.25  # the harness's create call, on this host's clock
CLUSTER_T0 = LOCAL_T0 + SKEW - 0.25  # the VM's creationTimestamp (whole seconds)


def _ts(epoch: float) -> str:
    """metav1.Time as the API server serialises it: RFC 3339, whole seconds, UTC."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _vm(ready_at: float | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"printableStatus": "Starting"}
    if ready_at is not None:
        status = {"printableStatus": "Running", "ready": True,
                  "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _ts(ready_at)}]}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm-1", "namespace": "ns", "uid": "vm-uid", "creationTimestamp": _ts(CLUSTER_T0),
                         "labels": {"vm.kubevirt.io/name": "vm-1"}},
            "status": status}


def _vmi(phases: dict[str, float], ready_at: float | None = None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": _ts(ready_at)}] if ready_at else []
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm-1", "namespace": "ns", "uid": "vmi-uid",
                         "creationTimestamp": _ts(CLUSTER_T0 + 1), "labels": {"vm.kubevirt.io/name": "vm-1"}},
            "status": {"phase": list(phases)[-1], "nodeName": "node0", "conditions": conditions,
                       "phaseTransitionTimestamps": [{"phase": p, "phaseTransitionTimestamp": _ts(t)}
                                                     for p, t in phases.items()]}}


def _recorder() -> tuple[Recorder, Timeline]:
    recorder = Recorder()
    timeline = Timeline()
    recorder.track("vm-1", timeline)
    timeline.add("created", LOCAL_T0, "harness")  # what KubeVirtPlatform.create_vm records
    return recorder, timeline


def test_spans_never_mix_the_cluster_clock_with_the_harness() -> None:
    recorder, timeline = _recorder()
    recorder.on_vm("ADDED", _vm(), LOCAL_T0 + 0.05)
    running = {"Pending": CLUSTER_T0 + 1, "Scheduling": CLUSTER_T0 + 1, "Scheduled": CLUSTER_T0 + 3,
               "Running": CLUSTER_T0 + 7}
    recorder.on_vmi("MODIFIED", _vmi(running), LOCAL_T0 + 6.4)

    on_cluster = timeline.span("running")
    assert on_cluster is not None
    # creationTimestamp -> Running phaseTransitionTimestamp: both the cluster's, whole seconds
    assert on_cluster.seconds == 7.0 and on_cluster.clock == "cluster" and on_cluster.source == "platform"
    assert on_cluster.resolution_s == 1.0
    observed = timeline.span("running_observed")  # boot.observed_time_to_running_s
    assert observed is not None
    # the harness's create call -> the watch event's arrival: both this host's clock, no resolution
    assert observed.seconds == pytest.approx(6.4) and observed.clock == "local" and observed.source == "harness"
    assert observed.resolution_s == 0.0
    # every event says whose clock stamped it
    clocks = {e.name: (e.clock, e.resolution_s) for e in timeline.events}
    assert clocks["running"] == ("cluster", 1.0) and clocks["running_observed"] == ("local", 0.0)
    assert clocks["created"] == ("local", 0.0) and clocks["cluster_created"] == ("cluster", 1.0)


def test_a_cluster_time_without_the_clusters_own_start_has_no_span() -> None:
    """A VMI seen before its VM (informers deliver in any order): its Running time has no
    cluster-clock start yet, and is never measured from the harness's ``created`` instead."""
    recorder, timeline = _recorder()
    recorder.on_vmi("ADDED", _vmi({"Running": CLUSTER_T0 + 4}), LOCAL_T0 + 3.0)
    assert timeline.get("running") is not None and timeline.get("cluster_created") is None
    assert timeline.span("running") is None
    observed = timeline.span("running_observed")
    assert observed is not None and observed.seconds == pytest.approx(3.0)
    recorder.on_vm("MODIFIED", _vm(), LOCAL_T0 + 3.1)  # once the VM arrives, the span exists, on its clock
    span = timeline.span("running")
    assert span is not None and span.seconds == 4.0 and span.clock == "cluster"


def test_vm_ready_is_when_the_harness_saw_it_and_vmi_ready_keeps_our_own_name() -> None:
    recorder, timeline = _recorder()
    recorder.on_vm("ADDED", _vm(), LOCAL_T0 + 0.05)
    phases = {"Pending": CLUSTER_T0 + 1, "Scheduling": CLUSTER_T0 + 1, "Scheduled": CLUSTER_T0 + 2,
              "Running": CLUSTER_T0 + 5}
    recorder.on_vmi("MODIFIED", _vmi(phases, ready_at=CLUSTER_T0 + 5), LOCAL_T0 + 5.3)
    seen_ready = CLUSTER_T0 + 9.731  # the watch event's arrival (the informer's time.time())
    recorder.on_vm("MODIFIED", _vm(ready_at=CLUSTER_T0 + 6), seen_ready)

    latencies = recorder.vms["vm-1"].latencies_ms()
    # kube-burner: time.Now() at the Ready condition minus the VM's creationTimestamp (9.731 s),
    # not the condition's lastTransitionTime (6 s)
    assert latencies["VMReady"] == pytest.approx(9731.0)
    assert latencies["VMIRunning"] == 5000.0 and latencies["VMICreated"] == 1000.0
    # only kube-burner's names are published; our VMI Ready (lastTransitionTime) is not among them
    assert "VMIReady" not in latencies and set(latencies) <= set(ORDER), latencies
    ready = timeline.get("vmi_ready")
    assert ready is not None and ready.clock == "cluster" and ready.timestamp == CLUSTER_T0 + 5
    assert timeline.get("vmi_ready_observed") is not None
    vm_ready = timeline.get("vm_ready")  # the condition's own time stays in the timeline, on its clock
    assert vm_ready is not None and vm_ready.clock == "cluster" and vm_ready.timestamp == CLUSTER_T0 + 6
