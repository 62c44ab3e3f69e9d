"""The sim-kubevirt lab's control plane: how long it takes to come up, and what it holds.

1. Lab up, with the build cached: a first lab (``cold``: the first in this process, new PKI, new
   etcd, every process started), the same again (``warm``: binaries and Python already in
   memory), and attaching to a lab that is up (what ``virtproof run`` does after ``lab up``).
   Each with the phases (``SimKubeVirtLabHandle.timings``).
2. Memory: RSS of etcd and kube-apiserver (and the rest) idle after up, and after ``--objects``
   VirtualMachines were created through virt-api's webhooks (``runStrategy: Halted``: objects
   only) or with ``--running``, VMs that virt-controller turns into VMIs and launcher pods which
   the node agent reports Running on paper nodes (100 per node).

    .venv/bin/python benchmarks/bench_controlplane.py [--objects 1000] [--running] [--json OUT]

Numbers, not pass/fail: the machine is shared (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

from virtproof.lab.controlplane.build import build
from virtproof.lab.controlplane.components import rss_mib, running_pid
from virtproof.lab.controlplane.lab import SimKubeVirtLabHandle
from virtproof.lab.controlplane.leftovers import COMPONENT_NAMES
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import Scenario


def _scenario(nodes: int) -> Scenario:
    return Scenario.model_validate({"name": "bench-cp", "lab": {"kind": "sim-kubevirt", "paper": True, "nodes": nodes},
                                    "suites": {"boot": {}}})


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _rss(handle: SimKubeVirtLabHandle) -> dict[str, float]:
    out = {}
    for name in COMPONENT_NAMES:
        pid = running_pid(handle.paths, name)
        out[name] = round(rss_mib(pid), 1) if pid else 0.0
    return out


def _up(nodes: int, label: str) -> tuple[SimKubeVirtLabHandle, dict[str, Any]]:
    handle = SimKubeVirtLabHandle(_scenario(nodes), f"bench-{label}-{new_run_id()}")
    load = _load()
    started = time.monotonic()
    platform = handle.up(lambda message: print(f"  {label}: {message}", file=sys.stderr, flush=True))
    seconds = time.monotonic() - started
    platform.close()
    return handle, {"up_s": round(seconds, 1), "load_before": load,
                    "phases_s": {k: round(v, 1) for k, v in handle.timings.items()}}


def _admin(handle: SimKubeVirtLabHandle) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(handle.paths.kubeconfig("admin")),  # type: ignore[no-untyped-call]
                            client_configuration=configuration)
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


def _vm(name: str, running: bool) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": "Always" if running else "Halted", "template": {"spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "128Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root", "containerDisk": {"image": "registry.invalid/virtproof/micro:latest"}}],
            }}}}


def _fill(handle: SimKubeVirtLabHandle, objects: int, running: bool) -> dict[str, Any]:
    api = _admin(handle)
    custom = client.CustomObjectsApi(api)
    namespace = "bench"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: custom.create_namespaced_custom_object(
            "kubevirt.io", "v1", namespace, "virtualmachines", _vm(f"vm{i:05d}", running)), range(objects)))
    created = time.monotonic() - started
    out: dict[str, Any] = {"objects": objects, "running": running, "create_s": round(created, 1),
                           "creates_per_s": round(objects / created, 1)}
    if running:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            vmis = custom.list_namespaced_custom_object("kubevirt.io", "v1", namespace, "virtualmachineinstances")
            phases = [(v.get("status") or {}).get("phase") for v in vmis["items"]]
            if phases.count("Running") >= objects:
                break
            time.sleep(5)
        out["vmis_running"] = phases.count("Running")
        out["all_running_s"] = round(time.monotonic() - started, 1)
    time.sleep(10)  # let the caches and informers settle
    api.close()  # type: ignore[no-untyped-call]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000, help="VirtualMachines to create (default 1000)")
    parser.add_argument("--running", action="store_true", help="runStrategy Always: VMIs and pods on paper nodes")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    made = build(progress=lambda m: print(f"  build: {m}", file=sys.stderr, flush=True))
    results["build"] = {"cached": made.cached, "seconds": round(made.seconds, 1),
                        "first_build_s": made.build.info.get("seconds")}
    nodes = max(2, math.ceil(args.objects / 100) + 1) if args.running else 2
    first, results["cold"] = _up(nodes, "cold")
    first.down()
    second, results["warm"] = _up(nodes, "warm")
    try:
        started = time.monotonic()
        SimKubeVirtLabHandle(_scenario(nodes), second.lab_id).attach().close()
        results["attach_s"] = round(time.monotonic() - started, 1)
        time.sleep(10)
        results["rss_idle_mib"] = _rss(second)
        results["fill"] = _fill(second, args.objects, args.running)
        results["rss_filled_mib"] = _rss(second)
        results["load_after"] = _load()
    finally:
        second.down()
    print(json.dumps(results, indent=2))
    cold, warm = results["cold"], results["warm"]
    print(f"\nlab up (build cached, {nodes} paper nodes): cold {cold['up_s']} s, warm {warm['up_s']} s, "
          f"attach {results['attach_s']} s (load {cold['load_before']})")
    idle, filled = results["rss_idle_mib"], results["rss_filled_mib"]
    what = f"{args.objects} {'running VMs (VMIs, pods)' if args.running else 'halted VMs'}"
    for name in COMPONENT_NAMES:
        print(f"  {name:24} idle {idle[name]:7.1f} MiB   with {what} {filled[name]:7.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
