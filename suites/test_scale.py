"""The scale suite: many VMs on one control plane, and what each cost it.

``count`` VMs are created, at most ``concurrency`` calls in flight and ``qps`` creates per second;
every one must reach Running within ``timeout_s``; then all are deleted, as many at once. No guest
is logged into: on a ``sim-kubevirt`` lab with ``paper: true`` the VMIs have no guest at all,
so what is measured is the control plane (API server, etcd, virt-api, virt-controller, the
scheduler) and not the hardware.

Samples: ``scale.time_to_running_s`` per VM (on the platform's own clock; KubeVirt: whole
seconds from the VM's creationTimestamp), ``scale.observed_time_to_running_s`` (when the harness
saw it), ``scale.create_rate_vms_per_s``, ``scale.all_running_s``, ``scale.delete_s``,
``scale.failed``; KubeVirt's ``vmi_latency.<Phase>_ms`` (the suites' platform_latencies fixture);
and with ``api_metrics``, the API server's own request counters as ``api.requests_per_vmi``
(labels verb, group, resource), as KubeVirt's perfscale audit reports them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from virtproof.lab.platform import (
    VM,
    ApiMetrics,
    ApiRequests,
    Capability,
    Platform,
    PlatformError,
    feature,
)
from virtproof.scenarios.model import Scenario
from virtproof.scenarios.scale import ScaleSuite
from virtproof.suites.factory import Recorder, VMFactory

pytestmark = [pytest.mark.capability("boot"), pytest.mark.xdist_group("scale")]


@dataclass(frozen=True)
class ScaleOutcome:
    created: int
    running: int
    failures: tuple[str, ...]
    api_before: tuple[ApiRequests, ...]
    api_after: tuple[ApiRequests, ...]


class _Pace:
    """At most ``qps`` starts per second, spread evenly, whatever the number of threads."""

    def __init__(self, qps: float) -> None:
        self.interval = 1.0 / qps
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            start = max(self.next, time.monotonic())
            self.next = start + self.interval
        time.sleep(max(0.0, start - time.monotonic()))


def _api(platform: Platform) -> tuple[ApiRequests, ...]:
    if Capability.API_METRICS not in platform.capabilities:
        return ()
    return tuple(feature(platform, ApiMetrics, Capability.API_METRICS).api_requests())


def _create_and_wait(factory: VMFactory, suite: ScaleSuite, record: Recorder) -> tuple[list[VM], list[str]]:
    pace = _Pace(suite.qps)
    deadline = time.monotonic() + suite.timeout_s
    failures: list[str] = []
    started = time.monotonic()

    def create(index: int) -> VM | None:
        pace.wait()
        try:
            return factory.create(factory.spec(scratch_disk_mib=0))
        except PlatformError as exc:
            failures.append(f"create {index}: {exc}")
            record("scale.failed", 1, "count", stage="create", reason=str(exc)[:200])
            return None

    with ThreadPoolExecutor(suite.concurrency, thread_name_prefix="scale-create") as pool:
        vms = [vm for vm in pool.map(create, range(suite.count)) if vm is not None]
    created_s = time.monotonic() - started
    if vms:
        record("scale.create_rate_vms_per_s", len(vms) / max(created_s, 1e-6), "VMs/s", vms=str(len(vms)))

    def wait(vm: VM) -> bool:
        try:
            running = factory.platform.wait_running(vm, max(1.0, deadline - time.monotonic()))
        except PlatformError as exc:
            failures.append(f"{vm.name}: {exc}")
            record("scale.failed", 1, "count", stage="running", vm=vm.name, reason=str(exc)[:200])
            return False
        span = vm.timeline.span(running.name)
        if span is not None:
            record("scale.time_to_running_s", span.seconds, "s", vm=vm.name, time_source=span.source,
                   clock=span.clock, resolution_s=f"{span.resolution_s:g}")
        observed = vm.timeline.span(f"{running.name}_observed")
        if observed is not None:
            record("scale.observed_time_to_running_s", observed.seconds, "s", vm=vm.name, time_source="harness")
        return True

    with ThreadPoolExecutor(min(64, max(1, len(vms))), thread_name_prefix="scale-wait") as pool:
        ran = sum(pool.map(wait, vms))
    if ran == len(vms) and vms:
        record("scale.all_running_s", time.monotonic() - started, "s", vms=str(len(vms)))
    return vms, failures


def _delete_all(factory: VMFactory, vms: Sequence[VM], concurrency: int, record: Recorder) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="scale-delete") as pool:
        list(pool.map(factory.delete, vms))
    if vms:
        record("scale.delete_s", time.monotonic() - started, "s", vms=str(len(vms)))


@pytest.fixture(scope="module")
def outcome(scenario: Scenario, platform: Platform, record: Recorder) -> ScaleOutcome:
    suite = scenario.suites.scale
    if suite is None:
        pytest.skip("the scenario has no scale suite")
    factory = VMFactory(platform, scenario.guest, prefix="scale")
    before = _api(platform)
    vms: list[VM] = []
    try:
        vms, failures = _create_and_wait(factory, suite, record)
        after = _api(platform)
        running = len(vms) - sum(1 for f in failures if not f.startswith("create "))
    finally:
        _delete_all(factory, vms, suite.concurrency, record)
        factory.cleanup()
    if after:
        per_vmi = _per_vmi(before, after, len(vms))
        for item in per_vmi:
            record("api.requests_per_vmi", item.count, "requests", verb=item.verb, group=item.group,
                   resource=item.resource)
    return ScaleOutcome(len(vms), running, tuple(failures), before, after)


def _per_vmi(before: Sequence[ApiRequests], after: Sequence[ApiRequests], vms: int) -> list[ApiRequests]:
    """The requests served while the VMs were created and ran, per VM, by verb and resource."""
    start = {(r.verb, r.group, r.resource): r.count for r in before}
    out = []
    for r in after:
        delta = r.count - start.get((r.verb, r.group, r.resource), 0.0)
        if delta > 0 and vms:
            out.append(ApiRequests(r.verb, r.resource, r.group, delta / vms))
    return out


def test_every_vm_was_created_and_ran(outcome: ScaleOutcome, scenario: Scenario) -> None:
    suite = scenario.suites.scale
    assert suite is not None
    assert not outcome.failures, f"{len(outcome.failures)} failure(s), first: {outcome.failures[:3]}"
    assert outcome.created == outcome.running == suite.count


@pytest.mark.capability("api_metrics")
def test_the_api_cost_per_vmi_was_read_from_the_api_server(outcome: ScaleOutcome) -> None:
    assert outcome.api_after, "the API server's request counters were not read"
    served = {(r.verb, r.resource) for r in _per_vmi(outcome.api_before, outcome.api_after, max(1, outcome.created))}
    assert ("POST", "virtualmachines") in served or ("CREATE", "virtualmachines") in served, sorted(served)[:20]
