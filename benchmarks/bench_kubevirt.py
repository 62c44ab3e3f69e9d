"""KubeVirt backend benchmark on the real control plane: a paper sim-kubevirt lab (issue 11).

One lab (``--nodes`` paper nodes, default 100: etcd, kube-apiserver, controller-manager,
scheduler 1.34.4 and KubeVirt v1.9.0's virt-api and virt-controller on loopback, the node agent
reporting every VMI Running without a guest), one workload, two measures:

1. Create rate: ``--vms`` VirtualMachines (default 1000) through ``KubeVirtPlatform.create_vm``,
   the platform ``SimKubeVirtLabHandle.up`` returns (what ``virtproof run`` gets: the suites'
   least-privilege kubeconfig), from ``--concurrency`` workers under the connection's client-side
   ``--qps``/``--burst`` token bucket (client-go's, kube-burner's). Each VM costs the cloud-init
   Secret, the Service and the VM (3 requests; the first VM's server-side dry run once more).
   Then every VM must be Running through the real virt-controller and the node agent; printed:
   the achieved rate and kube-burner's vmiLatency quantiles from the real objects.
2. Watch cost: the backend's ``Informer`` and timeline ``Recorder`` (``lab/kubevirt``) watching
   the run's VMIs on the real server (its own watch, beside the platform's three) from before the
   first create until every VMI is Running. Printed: events seen (by type, and whether the watch
   caught up: each VMI's last event at the resourceVersion a final list gives), the Recorder's
   handler time per event (goal < 1 ms), the watch thread's CPU per event (TLS read, JSON
   decode, handler and this benchmark's bookkeeping) and the platform's own Recorder's handler
   time over its VM, VMI and VMIM events.

Write -> recorded delay, measured only where it can be measured honestly. Every VMI write is
virt-controller's or the node agent's (other processes): the harness cannot see when the API
server stored it, and the objects' own times (``creationTimestamp``, ``phaseTransitionTimestamps``,
``managedFields[].time``) are ``metav1.Time``, whole seconds. So:

- Probe writes (the exact figure): while the VMs come up, ``--probe-rate`` times a second the
  harness merge-patches an annotation onto a VMI the watch has seen (as the lab's admin) and
  keeps the time it sent the PATCH and the time the answer came, with the resourceVersion the
  server gave the write; the watch event carrying that resourceVersion is matched to it. The
  server stored the write between the two times, so the delay to the Recorder having recorded
  the event lies between ``recorded - answered`` (may be below 0: the watch can beat the
  PATCH's own answer) and ``recorded - sent``; both are printed (p50/p99/max), one clock (this
  host's). These writes load the watch like any other VMI write.
- Every event, an upper bound: ``recorded`` minus the newest ``managedFields[].time`` of the
  object (kube-apiserver's clock, the same host), which is whole seconds and may be an earlier
  write's (a manager's entry keeps its time when a write changes none of its fields). So the
  true delay is at most this bound, and only a bound over 2 s says an event was certainly more
  than 1 s late; the count of those is printed.

    .venv/bin/python benchmarks/bench_kubevirt.py [--vms 1000] [--nodes 100] [--concurrency 20]
        [--qps 100] [--burst 100] [--probe-rate 5] [--json OUT]

Numbers, not pass/fail: the machine is shared (the load average is printed with them).
Everything is removed at the end (the run's objects, then the lab: processes and files), also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, cast

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from virtproof.instruments.quantiles import nearest_rank
from virtproof.lab.controlplane.lab import SUITE_KUBECONFIG, SimKubeVirtLabHandle
from virtproof.lab.kubevirt import cleanup
from virtproof.lab.kubevirt.connect import Connection, ConnectOptions, connect
from virtproof.lab.kubevirt.informer import Informer
from virtproof.lab.kubevirt.platform import KubeVirtPlatform, KubeVirtVM
from virtproof.lab.kubevirt.resources import VMI, Kube, Obj
from virtproof.lab.kubevirt.timeline import Recorder
from virtproof.lab.platform import PlatformError, Timeline, VMSpec
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario

PROBE = "bench.virtproof.io/probe"
MERGE_PATCH = "application/merge-patch+json"


def _scenario(nodes: int, qps: float, burst: int) -> Scenario:
    return Scenario.model_validate({"name": "bench-kubevirt", "suites": {"boot": {}}, "lab": {
        "kind": "sim-kubevirt", "paper": True, "nodes": nodes, "qps": qps, "burst": burst}})


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs"


def _ms(values: list[float], q: float) -> float:
    return 1000.0 * nearest_rank(values, q) if values else math.nan


def _spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(_ms(values, 50), 2), "p99_ms": round(_ms(values, 99), 2),
            "max_ms": round(1000.0 * max(values), 2) if values else math.nan}


@dataclass
class Seen:
    """One watch event, as this benchmark keeps it (the Recorder keeps its own)."""

    kind: str
    name: str
    rv: str
    received: float
    recorded: float
    managed: str  # the newest managedFields[].time (RFC 3339, whole seconds), "" if none


@dataclass
class Probe:
    name: str
    sent: float
    answered: float
    rv: str


@dataclass
class WatchResult:
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    handler_ms: float = math.nan
    thread_cpu_ms: float = math.nan
    vmis_seen: int = 0
    caught_up: int = 0
    listed: int = 0
    probes: int = 0
    probes_matched: int = 0
    probe_failures: int = 0
    probe_error: str = ""
    probe_rtt: dict[str, float] = field(default_factory=dict)
    probe_low: dict[str, float] = field(default_factory=dict)  # recorded - answered
    probe_high: dict[str, float] = field(default_factory=dict)  # recorded - sent
    managed_bound: dict[str, float] = field(default_factory=dict)
    certainly_late: int = 0


class VmiWatch:
    """The backend's Informer + Recorder on the run's VMIs, with this benchmark's bookkeeping."""

    def __init__(self, kubeconfig: Path, namespace: str, selector: str, names: list[str]) -> None:
        self.kube = Kube(connect(ConnectOptions(str(kubeconfig), qps=1000, burst=1000)))
        self.recorder = Recorder()
        for name in names:
            self.recorder.track(name, Timeline())
        self.events: deque[Seen] = deque()
        self.names: list[str] = []  # VMIs seen, in order (read by the prober thread)
        self._named: set[str] = set()
        self.informer = Informer(self.kube, VMI, namespace, selector, self._handle)
        self._cpu_clock = 0
        self._cpu_start = 0.0

    def _handle(self, kind: str, obj: Obj, received: float) -> None:
        self.recorder.on_vmi(kind, obj, received)
        recorded = time.time()
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        times = [str(m.get("time") or "") for m in meta.get("managedFields") or []]
        self.events.append(Seen(kind, name, str(meta.get("resourceVersion") or ""), received, recorded,
                                max(times, default="")))  # RFC 3339 UTC strings sort as times
        if name and name not in self._named and kind != "DELETED":
            self._named.add(name)
            self.names.append(name)

    def start(self) -> None:
        self.informer.start()
        if not self.informer.synced.wait(60) or self.informer.error is not None:
            raise PlatformError(f"the benchmark's VMI watch did not start: {self.informer.error}")
        ident = self.informer.ident
        assert ident is not None
        self._cpu_clock = time.pthread_getcpuclockid(ident)
        self._cpu_start = time.clock_gettime(self._cpu_clock)

    def thread_cpu_s(self) -> float:
        return time.clock_gettime(self._cpu_clock) - self._cpu_start

    def wait_for(self, rvs: set[str], timeout: float) -> set[str]:
        """Wait until events with every one of ``rvs`` arrived; return those that did not."""
        deadline = time.monotonic() + timeout
        while True:
            missing = rvs - {e.rv for e in list(self.events)}
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def stop(self) -> None:
        self.informer.stop()
        self.kube.conn.close()


class Prober(threading.Thread):
    """``rate`` merge-patches a second onto VMIs the watch has seen, each timed by the harness."""

    def __init__(self, admin: Connection, namespace: str, watch: VmiWatch, rate: float) -> None:
        super().__init__(name="bench-prober", daemon=True)
        self.kube = Kube(admin)
        self.namespace, self.watch, self.interval = namespace, watch, 1.0 / rate
        self.probes: list[Probe] = []
        self.failures = 0
        self.first_error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self._stop_event.wait(self.interval):
            names = self.watch.names
            if not names:
                continue
            name = names[seq % len(names)]
            seq += 1
            body = {"metadata": {"annotations": {PROBE: str(seq)}}}
            sent = time.time()
            try:
                out = self.kube.custom.patch_namespaced_custom_object(
                    VMI.group, VMI.version, self.namespace, VMI.plural, name, body, _content_type=MERGE_PATCH)
            except (ApiException, HTTPError, OSError) as exc:
                self.failures += 1
                self.first_error = self.first_error or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            answered = time.time()
            written = cast(Obj, out)
            self.probes.append(Probe(name, sent, answered, str(written["metadata"]["resourceVersion"])))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _since(stamp: str, recorded: float) -> float | None:
    try:
        return recorded - datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _watch_result(watch: VmiWatch, prober: Prober, listed: dict[str, str]) -> WatchResult:
    events = list(watch.events)
    r = WatchResult(events=len(events), by_type=dict(Counter(e.kind for e in events)))
    r.handler_ms = 1000.0 * watch.recorder.processing_s / max(1, watch.recorder.handled)
    r.thread_cpu_ms = 1000.0 * watch.thread_cpu_s() / max(1, len(events))
    last: dict[str, int] = {}
    for e in events:
        last[e.name] = max(last.get(e.name, 0), int(e.rv or 0))
    r.vmis_seen, r.listed = len(last), len(listed)
    r.caught_up = sum(1 for name, rv in listed.items() if last.get(name, 0) >= int(rv))
    recorded = {e.rv: e.recorded for e in events}
    matched = [(p, recorded[p.rv]) for p in prober.probes if p.rv in recorded]
    r.probes, r.probes_matched = len(prober.probes), len(matched)
    r.probe_failures, r.probe_error = prober.failures, prober.first_error
    r.probe_rtt = _spread([p.answered - p.sent for p, _ in matched])
    r.probe_low = _spread([at - p.answered for p, at in matched])
    r.probe_high = _spread([at - p.sent for p, at in matched])
    bounds = [b for e in events if e.managed and e.kind != "SYNC" and (b := _since(e.managed, e.recorded)) is not None]
    r.managed_bound = _spread(bounds)
    r.certainly_late = sum(1 for b in bounds if b > 2.0)
    return r


@contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool whose queued work is dropped when the caller is interrupted (Ctrl-C does not wait
    for a thousand creates still queued)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-create")
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _requests_per_vm(platform: KubeVirtPlatform, spec: VMSpec) -> int:
    image = platform.config.images.get(spec.image)
    return 3 if image is not None and image.cloud_init else 2


def _listed(admin: Connection, namespace: str, selector: str) -> dict[str, str]:
    items = Kube(admin).list_objects(VMI, namespace, selector)
    return {str(i["metadata"]["name"]): str(i["metadata"]["resourceVersion"]) for i in items}


def run(handle: SimKubeVirtLabHandle, platform: KubeVirtPlatform, args: argparse.Namespace,
        out: dict[str, Any]) -> None:
    names = [f"vm-{i:04d}" for i in range(args.vms)]
    ns, selector = platform.namespace, platform.selector
    admin = connect(ConnectOptions(str(handle.paths.kubeconfig("admin")), qps=1000, burst=1000))
    watch = VmiWatch(handle.paths.kubeconfig(SUITE_KUBECONFIG), ns, selector, names)
    prober = Prober(admin, ns, watch, args.probe_rate)
    try:
        watch.start()
        out["load_before"] = _load()
        specs = [VMSpec(name=name) for name in names]
        prober.start()
        calls: list[float] = []

        def create(spec: VMSpec) -> KubeVirtVM:
            began = time.monotonic()
            vm = platform.create_vm(spec)
            calls.append(time.monotonic() - began)
            return vm

        started = time.monotonic()
        with _pool(args.concurrency) as pool:
            vms: list[KubeVirtVM] = list(pool.map(create, specs))
        created_s = time.monotonic() - started
        per_vm = _requests_per_vm(platform, specs[0])
        call = _spread(calls)
        out["create"] = {"vms": len(vms), "seconds": round(created_s, 2), "vms_per_s": round(len(vms) / created_s, 1),
                         "requests_per_vm": per_vm, "requests_per_s": round((per_vm * len(vms) + 1) / created_s, 1),
                         "qps": args.qps, "burst": args.burst, "concurrency": args.concurrency, "call": call}
        print(f"create: {len(vms)} VMs through KubeVirtPlatform.create_vm in {created_s:.1f} s = "
              f"{len(vms) / created_s:.1f} VMs/s, {(per_vm * len(vms) + 1) / created_s:.1f} requests/s "
              f"({per_vm} a VM; client qps {args.qps:g}, burst {args.burst}, concurrency {args.concurrency}); "
              f"a create_vm call p50 {call['p50_ms']:.0f} ms, p99 {call['p99_ms']:.0f} ms; load {_load()}", flush=True)
        deadline = time.monotonic() + args.timeout
        for vm in vms:
            platform.wait_running(vm, max(1.0, deadline - time.monotonic()))
        running_s = time.monotonic() - started
        out["all_running_s"] = round(running_s, 1)
        # kube-burner's VMReady is when the VM was seen Ready: wait for every one before summing up
        ready = platform.recorder.wait_for(lambda: all("VMReady" in r.phase_ts for r in platform.recorder.vms.values()),
                                           max(1.0, deadline - time.monotonic()))
        ready_s = time.monotonic() - started
        out["all_ready_s"] = round(ready_s, 1) if ready else None
        print(f"running: all {len(vms)} VMIs Running {running_s:.1f} s after the first create, "
              + (f"all VMs Ready after {ready_s:.1f} s" if ready else "not every VM Ready")
              + f" (as the harness saw them); load {_load()}", flush=True)
        prober.stop()
        missing = watch.wait_for({p.rv for p in prober.probes}, 30.0)
        listed = _listed(admin, ns, selector)
        watch.wait_for(set(listed.values()), 30.0)
        if missing:
            print(f"  ({len(missing)} probe writes never came through the watch)", flush=True)
        w = _watch_result(watch, prober, listed)
        out["watch"] = asdict(w)
        out["platform_recorder"] = {"events": platform.recorder.handled, "handler_ms": round(
            1000.0 * platform.recorder.processing_s / max(1, platform.recorder.handled), 4)}
        quantiles = platform.latency_quantiles()
        out["vmi_latency_ms"] = [q.as_kube_burner() for q in quantiles]
        out["load_after"] = _load()
        _print_watch(w, out["platform_recorder"], len(vms))
        print(f"vmiLatency quantiles (ms, kube-burner's method, from the real objects: virt-controller and "
              f"the node agent on {args.nodes} paper nodes):")
        for q in quantiles:
            print(f"  {q.quantile_name:14s} P50 {q.p50:7d}  P95 {q.p95:7d}  P99 {q.p99:7d}  max {q.max:7d}  "
                  f"avg {q.avg:7d}  (n {q.count})")
        print(f"load average {out['load_before']} before the creates, {out['load_after']} at the end", flush=True)
    finally:
        prober.stop()
        watch.stop()
        try:
            _clean(platform, admin, args, out)
        finally:
            admin.close()


def _print_watch(w: WatchResult, own: dict[str, float], vms: int) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(w.by_type.items()))
    print(f"watch (the backend's Informer + Recorder on VMIs): {w.events} events ({kinds}), "
          f"{w.events / max(1, vms):.1f} a VMI; caught up: {w.caught_up}/{w.listed} VMIs at or past the "
          f"resourceVersion of a final list")
    print(f"  handler (Recorder.on_vmi) {w.handler_ms:.4f} ms/event (goal < 1 ms); watch thread CPU "
          f"{w.thread_cpu_ms:.3f} ms/event (TLS read, JSON decode, handler, bookkeeping); the platform's own "
          f"Recorder {own['handler_ms']:.4f} ms/event over its {own['events']} VM, VMI and VMIM events")
    lo, hi, rtt = w.probe_low, w.probe_high, w.probe_rtt
    failed = f", {w.probe_failures} failed ({w.probe_error})" if w.probe_failures else ""
    print(f"  write -> recorded, {w.probes_matched}/{w.probes} probe writes{failed}: p50 {lo['p50_ms']:.1f} to "
          f"{hi['p50_ms']:.1f} ms, p99 {lo['p99_ms']:.1f} to {hi['p99_ms']:.1f} ms, max {lo['max_ms']:.1f} to "
          f"{hi['max_ms']:.1f} ms (the PATCH itself: p50 {rtt['p50_ms']:.1f} ms, p99 {rtt['p99_ms']:.1f} ms)")
    mb = w.managed_bound
    print(f"  write -> recorded, every event, upper bound from managedFields (whole seconds): p50 "
          f"{mb['p50_ms'] / 1000:.2f} s, p99 {mb['p99_ms'] / 1000:.2f} s, max {mb['max_ms'] / 1000:.2f} s; "
          f"{w.certainly_late} of {mb['n']:g} certainly more than 1 s late")


def _clean(platform: KubeVirtPlatform, admin: Connection, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Delete the run's objects and wait for its VMIs and namespace to go (the lab goes next)."""
    started = time.monotonic()
    try:
        deleted = cleanup.clean(platform.kube, platform.config.run_id)
        deadline = time.monotonic() + args.delete_timeout
        left = cleanup.leftovers(Kube(admin), platform.config.run_id)
        while left and time.monotonic() < deadline:
            time.sleep(2.0)
            left = cleanup.leftovers(Kube(admin), platform.config.run_id)
        seconds = time.monotonic() - started
        out["cleanup"] = {"deleted": len(deleted), "seconds": round(seconds, 1), "left": len(left)}
        if left:
            print(f"cleanup: {len(deleted)} objects deleted; {len(left)} still there after {seconds:.0f} s "
                  f"(e.g. {left[0]}); the lab's teardown removes them", flush=True)
        else:
            print(f"cleanup: {len(deleted)} objects deleted, all gone (VMs, VMIs, Services, Secrets, the "
                  f"namespace) in {seconds:.1f} s", flush=True)
    except (ApiException, HTTPError, OSError) as exc:
        print(f"cleanup: {type(exc).__name__}: {platform.redact(str(exc))[:200]}; the lab's teardown removes "
              "what is left", flush=True)
    finally:
        platform.close()


def _progress(message: str) -> None:
    print(f"  lab: {message}", file=sys.stderr, flush=True)


def _sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--vms", type=int, default=1000, help="VirtualMachines to create (default 1000)")
    ap.add_argument("--nodes", type=int, default=100, help="paper nodes (default 100)")
    ap.add_argument("--concurrency", type=int, default=20, help="create workers (default 20)")
    ap.add_argument("--qps", type=float, default=100.0, help="client-side requests/s (default 100)")
    ap.add_argument("--burst", type=int, default=100, help="client-side burst (default 100)")
    ap.add_argument("--probe-rate", type=float, default=5.0, help="probe writes/s while VMs come up (default 5)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for every VMI to be Running")
    ap.add_argument("--delete-timeout", type=float, default=300.0, help="seconds for the run's objects to go")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    out: dict[str, Any] = {"vms": args.vms, "nodes": args.nodes, "cpus": os.cpu_count()}
    handle = SimKubeVirtLabHandle(_scenario(args.nodes, args.qps, args.burst), f"bench-kv-{new_run_id()}")
    started = time.monotonic()
    try:
        try:
            platform = handle.up(_progress)  # tears itself down if it cannot come up, or on Ctrl-C
            out["lab_up_s"] = round(time.monotonic() - started, 1)
            print(f"lab: {args.nodes} paper nodes up in {out['lab_up_s']} s (load {_load()})", flush=True)
            run(handle, platform, args, out)
        finally:
            removed = handle.down()
            print(f"lab torn down: {len(removed)} processes and directories removed", flush=True)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): no numbers; the run's objects and the lab are gone", flush=True)
        return 130
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
