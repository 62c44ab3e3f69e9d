"""A small userspace kube-proxy for NodePort Services, so the Service path to a guest exists.

Like kube-proxy's old userspace mode (removed in Kubernetes 1.26; ``pkg/proxy/userspace``
``proxysocket.go`` ``TryConnectEndpoints`` and ``roundrobin.go``): for every port of every
NodePort (or LoadBalancer) Service, the proxy listens on each agent node's address at the
nodePort (inside the node's network namespace when it has one) and relays each accepted TCP
connection to an endpoint chosen round-robin among the *ready* endpoints of the Service's
EndpointSlices, which kube-controller-manager's real EndpointSlice controller fills from the
pods' readiness. A dial that fails moves on to the next endpoint, with the userspace proxier's
growing dial timeouts (250 ms, 500 ms, 1 s, 2 s); when all fail the client connection is reset.

Simplified: a pod's IP is not routed to anything here. An endpoint is its pod (``targetRef``),
and a dial to it reaches the pod's guest only while that pod runs the guest (the source
launcher before the migration's switch-over, the target launcher after it); a dial to a pod
that does not run it waits out the dial timeout, as a SYN to a pod without a listening guest
would. So a client sees exactly what the Service's endpoint state makes it see: the lag between
the guest moving and the EndpointSlice dropping the source pod is real and measurable (each
connection that tries the stale endpoint first pays 250 ms). No ClusterIP, no UDP, no session
affinity, no externalTrafficPolicy, no health-check node port; endpoints without a pod are
skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from virtproof.lab.simnodes.config import NodeConfig
from virtproof.lab.simnodes.informer import Store

log = logging.getLogger("virtproof.lab.simnodes")

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # userspace proxier EndpointDialTimeouts
CLONE_NEWNET = 0x40000000
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def listen_socket(address: str, port: int, netns: str | None) -> socket.socket:
    """A listening TCP socket bound in ``netns`` (a socket keeps the namespace it was made in)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(256)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    if netns is None:
        return make()
    result: Future[socket.socket] = Future()

    def in_namespace() -> None:  # setns changes only the calling thread's namespace
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{netns}") as target:
                if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
                try:
                    result.set_result(make())
                finally:
                    libc.setns(own.fileno(), CLONE_NEWNET)
        except OSError as exc:
            if not result.done():
                result.set_exception(exc)

    thread = threading.Thread(target=in_namespace, name=f"netns-{netns}")
    thread.start()
    thread.join()
    return result.result()


@dataclass(frozen=True)
class Listener:
    node: str
    address: str
    netns: str | None
    node_port: int
    service: str  # namespace/name
    port_name: str
    port: int  # the Service port (to match EndpointSlice ports by name)


@dataclass
class ProxyStats:
    connections: int = 0
    relayed: int = 0
    refused: int = 0
    stale_dials: int = 0  # dials to an endpoint pod that does not run its guest


class NodePortProxy:
    """Listeners for NodePort Services on the agent's nodes; relays to the guests behind endpoints."""

    def __init__(self, nodes: list[NodeConfig], services: Store, slices: Store,
                 pod_guest: Callable[[str], str | None]) -> None:
        self.nodes, self.services, self.slices, self.pod_guest = nodes, services, slices, pod_guest
        self.stats = ProxyStats()
        self.loop = asyncio.new_event_loop()
        self._servers: dict[Listener, asyncio.Server] = {}
        self._rr: dict[tuple[str, str], itertools.count[int]] = {}
        self._pending = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nodeport-proxy", daemon=True)
        self._failed: set[Listener] = set()

    def start(self) -> None:
        self._thread.start()
        self.changed()

    def changed(self) -> None:
        """Services or EndpointSlices changed: reconcile soon (coalesced)."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._reconcile()))

    # --- listeners -------------------------------------------------------------------------

    def _wanted(self) -> set[Listener]:
        wanted: set[Listener] = set()
        seen: set[tuple[str, str | None, int]] = set()
        for svc in self.services.items():
            spec = svc.get("spec") or {}
            if spec.get("type") not in ("NodePort", "LoadBalancer"):
                continue
            meta = svc.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") != "TCP" or not port.get("nodePort"):
                    continue
                for node in self.nodes:
                    where = (node.address, node.netns, int(port["nodePort"]))
                    if where in seen:
                        continue  # nodes sharing one address (loopback labs) share the listener
                    seen.add(where)
                    wanted.add(Listener(node.name, node.address, node.netns, int(port["nodePort"]), key,
                                        str(port.get("name") or ""), int(port.get("port") or 0)))
        return wanted

    async def _reconcile(self) -> None:
        with self._lock:
            self._pending = False
        wanted = self._wanted()
        for listener in [w for w in self._servers if w not in wanted]:
            server = self._servers.pop(listener)
            server.close()
            log.info("proxy: stopped %s:%d (%s)", listener.address, listener.node_port, listener.service)
        for listener in wanted - set(self._servers):
            try:
                sock = listen_socket(listener.address, listener.node_port, listener.netns)
            except OSError as exc:
                if listener not in self._failed:
                    self._failed.add(listener)
                    log.warning("proxy: cannot listen on %s:%d for %s: %s", listener.address, listener.node_port,
                                listener.service, exc)
                continue
            self._failed.discard(listener)

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              listener: Listener = listener) -> None:
                await self._serve(listener, reader, writer)  # the server keeps this task alive

            self._servers[listener] = await asyncio.start_server(handler, sock=sock)
            log.info("proxy: %s:%d -> %s port %s", listener.address, listener.node_port, listener.service,
                     listener.port_name or listener.port)

    # --- endpoints -------------------------------------------------------------------------

    def endpoints(self, service: str, port_name: str) -> list[tuple[str, int]]:
        """(pod key, target port) of the ready endpoints of ``service``'s port ``port_name``."""
        namespace, name = service.split("/", 1)
        found: list[tuple[str, int]] = []
        for eps in self.slices.items():
            meta = eps.get("metadata") or {}
            if meta.get("namespace") != namespace or (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) != name:
                continue
            port = next((p for p in eps.get("ports") or [] if str(p.get("name") or "") == port_name), None)
            if port is None or not port.get("port"):
                continue
            for endpoint in eps.get("endpoints") or []:
                ref = endpoint.get("targetRef") or {}
                if (endpoint.get("conditions") or {}).get("ready") is False or ref.get("kind") != "Pod":
                    continue
                found.append((f"{ref.get('namespace') or namespace}/{ref.get('name')}", int(port["port"])))
        found.sort()
        return found

    def _next(self, listener: Listener) -> tuple[str, int] | None:
        endpoints = self.endpoints(listener.service, listener.port_name)
        if not endpoints:
            return None
        counter = self._rr.setdefault((listener.service, listener.port_name), itertools.count())
        return endpoints[next(counter) % len(endpoints)]

    async def _dial(self, listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for timeout in DIAL_TIMEOUTS:
            endpoint = self._next(listener)
            if endpoint is None:
                return None
            pod, port = endpoint
            guest = self.pod_guest(pod)
            if guest is None:
                self.stats.stale_dials += 1
                await asyncio.sleep(timeout)  # nothing answers this pod's address: the dial times out
                continue
            try:
                return await asyncio.wait_for(asyncio.open_connection(guest, port), timeout)
            except (OSError, TimeoutError):
                continue
        return None

    async def _serve(self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        upstream = await self._dial(listener)
        if upstream is None:
            self.stats.refused += 1
            sock = writer.get_extra_info("socket")
            if sock is not None:  # reset, as a proxy with no endpoint does
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
            return
        self.stats.relayed += 1
        up_reader, up_writer = upstream
        # copyBytes: when one direction ends, both connections are closed (the other copy ends too)
        pipes = {asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))}
        _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for end in (up_writer, writer):
            with contextlib.suppress(OSError, RuntimeError):
                end.close()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        def close_all() -> None:
            for server in self._servers.values():
                server.close()
            self._servers.clear()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(close_all)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
