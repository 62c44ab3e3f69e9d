"""KubeVirt backend benchmark against the fake API server (real client, real HTTP, real watch).

1. Watch: the fake server streams ``--events`` VMI events (``--vmis`` VMIs, each created and
   moved through Pending/Scheduling/Scheduled/Running with conditions). Prints the backend's
   processing cost per event (the recorder's handler time; goal < 1 ms) and the delay from the
   server emitting an event to the backend recording it (p50/p99/max; goal p99 < 100 ms), once
   with events emitted as fast as possible (throughput) and once paced (``--paced-rate``/s).
   The fake server runs in a forked process so it does not share the backend's GIL.
2. Create: ``--vms`` VirtualMachines (plus their Services) through ``KubeVirtPlatform.create_vm``
   with ``--concurrency`` workers and client-side ``--qps``/``--burst`` like kube-burner; prints
   the achieved create rate and kube-burner vmiLatency quantiles (ms) the fake produced.

    .venv/bin/python benchmarks/bench_kubevirt.py [--events 10000] [--vms 1000] [--qps 100] [--burst 100]

Numbers, not pass/fail: the machine is shared.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # fakekube

from virtproof.instruments.quantiles import nearest_rank
from virtproof.lab.kubevirt.connect import ConnectOptions, connect
from virtproof.lab.kubevirt.informer import Informer
from virtproof.lab.kubevirt.resources import RUN_LABEL, VM_LABEL, VMI, Kube
from virtproof.lab.kubevirt.timeline import Recorder
from virtproof.lab.platform import Timeline, VMSpec

from fakekube import FakeCluster
from fakekube.controller import VMI as VMI_GVR
from fakekube.fixtures import open_platform
from fakekube.store import now_rfc3339

SENT = "bench.virtproof.io/sent"


def _vmi(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "labels": {RUN_LABEL: "bench", VM_LABEL: name},
                         "annotations": {SENT: str(time.time())}},
            "spec": {"domain": {"devices": {}}}}


def _steps() -> list[tuple[str, str | None]]:
    # (phase to add, condition to set True) -> with the ADDED event, 10 events per VMI
    return [("Pending", None), ("Scheduling", None), ("Scheduled", None), ("Scheduled", "PodScheduled"),
            ("Running", None), ("Running", "LiveMigratable"), ("Running", "Ready"),
            ("Running", "AgentConnected"), ("Running", "Synchronized")]


def _emit(store: Any, ns: str, events: int, vmis: int, rate: float | None) -> int:
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    emitted = 0
    for i in range(vmis):
        if emitted >= events:
            break
        store.create(VMI_GVR, ns, _vmi(f"vmi-{i}"))
        emitted += 1
        for phase, condition in _steps()[: max(0, events - emitted)]:
            if interval:
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

            def mutate(o: dict[str, Any], phase: str = phase, condition: str | None = condition) -> None:
                status = o.setdefault("status", {})
                if status.get("phase") != phase:
                    status["phase"] = phase
                    status.setdefault("phaseTransitionTimestamps", []).append(
                        {"phase": phase, "phaseTransitionTimestamp": now_rfc3339()})
                if condition:
                    status.setdefault("conditions", []).append(
                        {"type": condition, "status": "True", "lastTransitionTime": now_rfc3339()})
                o["metadata"]["annotations"][SENT] = str(time.time())
            store.update(VMI_GVR, ns, f"vmi-{i}", mutate)
            emitted += 1
    return emitted


def _server_process(conn: Any, events: int, vmis: int) -> None:
    """The fake API server in its own process (no GIL shared with the backend under test)."""
    with FakeCluster(controllers=False) as cluster:
        conn.send(str(cluster.kubeconfig))
        while True:
            command = conn.recv()
            if command is None:
                break
            ns, rate = command
            conn.send(_emit(cluster.store, ns, events, vmis, rate))


def watch_bench(conn: Any, kubeconfig: str, events: int, vmis: int, rate: float | None) -> dict[str, float]:
    ns = f"bench-{'paced' if rate else 'burst'}"
    kube = Kube(connect(ConnectOptions(kubeconfig, qps=1000, burst=1000)))
    recorder = Recorder()
    for i in range(vmis):
        recorder.track(f"vmi-{i}", Timeline())
    delays: list[float] = []
    done = threading.Event()

    def handler(kind: str, obj: dict[str, Any], received: float) -> None:
        recorder.on_vmi(kind, obj, received)
        sent = float(obj["metadata"]["annotations"][SENT])
        delays.append(time.time() - sent)
        if len(delays) >= events:
            done.set()

    informer = Informer(kube, VMI, ns, f"{RUN_LABEL}=bench", handler)
    informer.start()
    informer.synced.wait(30)
    started = time.perf_counter()
    conn.send((ns, rate))
    emitted = conn.recv()
    done.wait(120)
    wall = time.perf_counter() - started
    informer.stop()
    kube.conn.close()
    return {
        "events_emitted": emitted, "events_recorded": len(delays), "wall_s": wall,
        "events_per_s": len(delays) / wall if wall else 0.0,
        "handler_ms_per_event": 1000 * recorder.processing_s / max(1, recorder.handled),
        "client_wall_ms_per_event": 1000 * wall / max(1, len(delays)),
        "delay_p50_ms": 1000 * nearest_rank(delays, 50), "delay_p99_ms": 1000 * nearest_rank(delays, 99),
        "delay_max_ms": 1000 * max(delays),
    }


def create_bench(cluster: FakeCluster, vms: int, concurrency: int, qps: float, burst: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="vp-bench-kv-"))
    from virtproof.lab.kubevirt.connect import ConnectOptions as CO

    p = open_platform(cluster, state, run_id="bench-create",
                      connect=CO(str(cluster.kubeconfig), qps=qps, burst=burst))
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            created = list(pool.map(lambda i: p.create_vm(VMSpec(name=f"vm-{i:04d}")), range(vms)))
        elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 300
        for vm in created:
            p.wait_running(vm, max(1.0, deadline - time.monotonic()))
        time.sleep(1.0)
        quantiles = {q.quantile_name: q for q in p.latency_quantiles()}
        return {"vms": vms, "requests": 2 * vms, "seconds": elapsed, "vms_per_s": vms / elapsed,
                "requests_per_s": 2 * vms / elapsed, "qps": qps, "burst": burst, "concurrency": concurrency,
                "quantiles": quantiles}
    finally:
        from virtproof.lab.kubevirt.cleanup import clean

        clean(p.kube, "bench-create")
        p.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--paced-rate", type=float, default=1000.0, help="events/s in the paced run")
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--qps", type=float, default=100.0)
    ap.add_argument("--burst", type=int, default=100)
    args = ap.parse_args()
    vmis = (args.events + 9) // 10
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_process, args=(child, args.events, vmis), daemon=True)
    server.start()
    try:
        kubeconfig = parent.recv()
        for label, rate in (("burst", None), (f"paced {args.paced_rate:.0f}/s", args.paced_rate)):
            r = watch_bench(parent, kubeconfig, args.events, vmis, rate)
            print(f"watch ({label}): {r['events_recorded']}/{r['events_emitted']} VMI events in {r['wall_s']:.2f} s "
                  f"({r['events_per_s']:.0f}/s); handler {r['handler_ms_per_event']:.3f} ms/event "
                  f"(goal < 1 ms); client wall {r['client_wall_ms_per_event']:.3f} ms/event; "
                  f"event->recorded p50 {r['delay_p50_ms']:.1f} ms, p99 {r['delay_p99_ms']:.1f} ms "
                  f"(goal < 100 ms), max {r['delay_max_ms']:.1f} ms")
    finally:
        parent.send(None)
        server.join(10)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; the fake server runs in its own process)")
    with FakeCluster(step_s=0.01) as cluster:
        c = create_bench(cluster, args.vms, args.concurrency, args.qps, args.burst)
        print(f"create: {c['vms']} VMs (+ {c['vms']} Services) in {c['seconds']:.2f} s = {c['vms_per_s']:.1f} VMs/s, "
              f"{c['requests_per_s']:.1f} requests/s (client qps {c['qps']:.0f}, burst {c['burst']}, "
              f"concurrency {c['concurrency']})")
        print("vmiLatency quantiles (ms, fake controller, step 10 ms):")
        for name, q in c["quantiles"].items():
            print(f"  {name:14s} P50 {q.p50:8.1f}  P95 {q.p95:8.1f}  P99 {q.p99:8.1f}  max {q.max:8.1f}  "
                  f"avg {q.avg:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
