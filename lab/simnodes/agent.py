"""The node agent: kubelet and virt-handler for the Nodes of one control-plane lab.

Wiring: the admin identity lists and watches (informers) pods bound to any node, VMIs with a
node, Nodes, and (for the proxy) Services and EndpointSlices; their events queue keys; workers
sync a pod as the kubelet (``kubelet.py``) and a VMI as virt-handler (``handler.py``), writing
with the node's own identities (``identity.py``); the node keeper renews Leases and heartbeats
(``leases.py``); the NodePort proxy (``proxy.py``) relays Service traffic to guests. The agent
writes ``agent/status.json`` (when written, its CPU time, requests, VMIs, guests) every 10 s and at exit.

Stopping (SIGTERM/SIGINT): informers and workers stop, every guest the agent started is
stopped (qemu processes, taps, L2 leases), the nodes are labelled unschedulable as virt-handler
does on exit, and the process exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from virtproof.lab.qemu.process import kill_all_started
from virtproof.lab.simnodes.config import AgentConfig, NodeConfig
from virtproof.lab.simnodes.guests import Guests, PaperGuests, QemuGuests
from virtproof.lab.simnodes.handler import Handler
from virtproof.lab.simnodes.identity import HandlerIdentities, IdentityError, kubelet_certificate
from virtproof.lab.simnodes.informer import Informer, WorkQueue, key_of, run_workers
from virtproof.lab.simnodes.kube import ApiError, Kube, Obj, path_of
from virtproof.lab.simnodes.kubelet import Kubelet
from virtproof.lab.simnodes.leases import NodeKeeper
from virtproof.lab.simnodes.proxy import NodePortProxy
from virtproof.lab.simnodes.runtime import LAUNCHER, Runtime, owner_vmi, pod_kind

log = logging.getLogger("virtproof.lab.simnodes")

STATUS_EVERY_S = 10.0
CRASH_CHECK_S = 1.0


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived while the agent was starting."""


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.nodes: dict[str, NodeConfig] = {n.name: n for n in cfg.nodes}
        self.stopping = threading.Event()
        self.started = time.time()
        self.runtime = Runtime()
        self.queue = WorkQueue()
        self.informers: list[Informer] = []
        self.kubes: list[Kube] = []
        self.guests: Guests | None = None
        self.handlers: HandlerIdentities | None = None
        self.keeper: NodeKeeper | None = None
        self.proxy: NodePortProxy | None = None
        self.kubelet_identity: dict[str, str] = {}
        self._pools: list[ThreadPoolExecutor] = []

    # --- start -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self.stopping.is_set():
            raise Interrupted()

    def _kubelet_clients(self, admin: Kube) -> dict[str, Kube]:
        clients: dict[str, Kube] = {}
        directory = self.cfg.state_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

        def one(name: str) -> None:
            if self.stopping.is_set():
                return
            try:
                cert, key = kubelet_certificate(admin, name, directory)
                clients[name] = Kube.with_certificate(self.cfg.server, self.cfg.ca_file, cert, key, f"kubelet-{name}")
                self.kubelet_identity[name] = f"system:node:{name}"
            except (IdentityError, ApiError) as exc:
                log.warning("node %s: no kubelet certificate (%s); writing as the admin instead", name, exc)
                clients[name] = admin
                self.kubelet_identity[name] = "admin"

        with ThreadPoolExecutor(8, thread_name_prefix="identity") as pool:  # 100 nodes' CSRs at once
            list(pool.map(one, self.nodes))
        self._check()
        self.kubes += [clients[name] for name in self.nodes]
        return clients

    def start(self) -> None:
        cfg = self.cfg
        log.info("agent for lab %s: %d node(s), %s", cfg.lab_id, len(self.nodes),
                 "paper" if cfg.paper else f"qemu lab {cfg.qemu_lab_id}")
        admin = Kube.from_kubeconfig(cfg.kubeconfig)
        self.kubes.append(admin)
        kubelets = self._kubelet_clients(admin)
        self._check()
        self.handlers = HandlerIdentities(admin, kubelets, cfg.server, cfg.ca_file)
        self.handlers.start(list(self.nodes))
        self._check()
        if cfg.paper:
            self.guests = PaperGuests(cfg.pod_cidr)
        else:
            assert cfg.qemu_lab_id is not None
            self.guests = QemuGuests(cfg.qemu_lab_id, cfg.nodes)
        ops = ThreadPoolExecutor(4, thread_name_prefix="guest-ops")
        keeper_pool = ThreadPoolExecutor(4, thread_name_prefix="node-keeper")
        self._pools += [ops, keeper_pool]

        pods = Informer(admin, path_of("", "v1", "pods"), self._on_pod, [("fieldSelector", "spec.nodeName!=")],
                        name="pods")
        vmis = Informer(admin, path_of("kubevirt.io", "v1", "virtualmachineinstances"), self._on_vmi,
                        [("labelSelector", "kubevirt.io/nodeName")], name="vmis")
        nodes = Informer(admin, path_of("", "v1", "nodes"), lambda *_: None, name="nodes")
        self.informers += [pods, vmis, nodes]
        handler_client = self.handlers.client
        self.kubelet = Kubelet(self.nodes, kubelets, pods.store, self.runtime, self.guests, ops, self._enqueue)
        self.handler = Handler(self.nodes, handler_client, vmis.store, self.runtime, self.guests, self.kubelet, ops,
                               self._enqueue, self._enqueue_after, instant=cfg.paper)
        if cfg.proxy and not cfg.paper:
            services = Informer(admin, path_of("", "v1", "services"), self._on_service, name="services")
            slices = Informer(admin, path_of("discovery.k8s.io", "v1", "endpointslices"), self._on_service,
                              name="endpointslices")
            self.informers += [services, slices]
            self.proxy = NodePortProxy(list(self.nodes.values()), services.store, slices.store, self._pod_guest)
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            while not informer.synced.wait(0.5):
                self._check()
        run_workers(self.queue, self._dispatch, 4 if not cfg.paper else 8, "sync")
        self.keeper = NodeKeeper(list(self.nodes), kubelets, handler_client, nodes.store, keeper_pool,
                                 self.guests.machine_types)
        self.keeper.start()
        if self.proxy is not None:
            self.proxy.start()
        threading.Thread(target=self._watch_guests, name="guest-watch", daemon=True).start()
        threading.Thread(target=self._report_loop, name="status", daemon=True).start()
        kinds = sorted(set(self.kubelet_identity.values()) - {"admin"})
        log.info("agent ready in %.1f s (kubelet identities: %d system:node:*, %d admin%s)",
                 time.time() - self.started, len(kinds), sum(v == "admin" for v in self.kubelet_identity.values()),
                 f"; e.g. {kinds[0]}" if kinds else "")

    # --- events ----------------------------------------------------------------------------

    def _enqueue(self, kind: str, key: str) -> None:
        self.queue.add((kind, key))

    def _enqueue_after(self, kind: str, key: str, delay: float) -> None:
        self.queue.add_after((kind, key), delay)

    def _on_pod(self, event: str, old: Obj | None, new: Obj | None) -> None:
        pod = new or old or {}
        if ((pod.get("spec") or {}).get("nodeName")) not in self.nodes:
            return
        self.queue.add(("pod", key_of(pod)))
        if pod_kind(pod) == LAUNCHER:
            owner = owner_vmi(pod)
            if owner is not None:
                self.queue.add(("vmi", owner[0]))

    def _on_vmi(self, event: str, old: Obj | None, new: Obj | None) -> None:
        self.queue.add(("vmi", key_of(new or old or {})))

    def _on_service(self, event: str, old: Obj | None, new: Obj | None) -> None:
        if self.proxy is not None:
            self.proxy.changed()

    def _dispatch(self, item: Hashable) -> None:
        assert isinstance(item, tuple)
        kind, key = item
        if self.stopping.is_set():
            return
        if kind == "pod":
            self.kubelet.sync(key)
        else:
            self.handler.sync(key)

    def _pod_guest(self, pod_key: str) -> str | None:
        """The guest address behind ``pod_key`` while that pod runs the guest (the proxy's dial)."""
        record = self.runtime.pod_by_key(pod_key)
        if record is None or record.exited is not None:
            return None
        with self.runtime.lock:
            guest = self.runtime.guests.get(record.vmi_uid or "")
            if guest is None or guest.pod_uid != record.uid or guest.state != "running":
                return None
            return guest.ip

    def _watch_guests(self) -> None:
        """A domain whose qemu exited on its own is a crash (libvirt's domain event)."""
        while not self.stopping.wait(CRASH_CHECK_S):
            if self.guests is None or self.cfg.paper:
                continue
            with self.runtime.lock:
                running = [g for g in self.runtime.guests.values() if g.state == "running" and not g.migrating]
            for guest in running:
                if not self.guests.alive(guest.name):
                    with self.runtime.lock:
                        if guest.state != "running" or guest.migrating:
                            continue
                        guest.state, guest.error = "crashed", "qemu exited"
                    log.warning("guest %s (%s) exited", guest.name, guest.vmi_key)
                    self._enqueue("vmi", guest.vmi_key)

    # --- accounting --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self.runtime.lock:
            guests = list(self.runtime.guests.values())
            pods = len(self.runtime.pods)
            migrations = len(self.runtime.migrations)
        requests: dict[str, int] = {}
        for kube in {id(k): k for k in self.kubes}.values():
            for method, count in kube.requests.items():
                requests[method] = requests.get(method, 0) + count
        if self.handlers is not None:
            for entry in self.handlers.tokens.values():
                for method, count in entry.kube.requests.items():
                    requests[method] = requests.get(method, 0) + count
        return {
            "pid": os.getpid(),
            "lab_id": self.cfg.lab_id,
            "paper": self.cfg.paper,
            "written": round(time.time(), 3),  # epoch s: a reader waits for a status newer than its event
            "uptime_s": round(time.time() - self.started, 1),
            "cpu_user_s": round(usage.ru_utime, 3),
            "cpu_system_s": round(usage.ru_stime, 3),
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "pods": pods,
            "guests": len(guests),
            "guests_running": sum(1 for g in guests if g.state == "running"),
            "migrations_in_flight": migrations,
            "vmi_writes": self.handler.writes if hasattr(self, "handler") else 0,
            "requests": requests,
            "watch_events": {i.name: i.events for i in self.informers},
            "kubelet_identity": self.kubelet_identity,
            "keeper": {"lease_updates": self.keeper.lease_updates, "status_patches": self.keeper.status_patches,
                       "heartbeats": self.keeper.heartbeats} if self.keeper else {},
            "proxy": vars(self.proxy.stats) if self.proxy else None,
        }

    def write_status(self) -> None:
        directory = self.cfg.state_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = directory / ".status.json.tmp"
        tmp.write_text(json.dumps(self.status(), indent=1) + "\n")
        os.replace(tmp, directory / "status.json")

    def _report_loop(self) -> None:
        while not self.stopping.wait(STATUS_EVERY_S):
            try:
                self.write_status()
            except OSError as exc:
                log.warning("status file: %s", exc)

    # --- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        log.info("stopping")
        for informer in self.informers:
            informer.stop()
        self.queue.close()
        if self.proxy is not None:
            self.proxy.stop()
        for pool in self._pools[:1]:  # guest starts in flight finish (or are cancelled) first
            pool.shutdown(wait=True, cancel_futures=True)
        if self.guests is not None:
            self.guests.close()
            if not self.cfg.paper:
                killed = kill_all_started()  # a migration destination being born, if any
                log.info("all guests stopped%s", f" ({killed} qemu killed)" if killed else "")
        if self.keeper is not None:
            self.keeper.stop(mark_unschedulable=True)
        try:
            self.write_status()
        except OSError:
            pass
        if self.handlers is not None:
            self.handlers.stop()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for kube in {id(k): k for k in self.kubes}.values():
            kube.close()
        log.info("stopped")
