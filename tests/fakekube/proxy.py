"""The fake cluster's kube-proxy: NodePort listeners on 127.0.0.1 forwarding to the guest
port of whichever VMI the Service selects, wherever that guest runs now (it follows migrations)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

Resolve = Callable[[int], tuple[str, int] | None]


class NodePortProxy:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listeners: dict[int, socket.socket] = {}
        self.resolve: Resolve = lambda node_port: None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(512)
        port = int(sock.getsockname()[1])
        with self._lock:
            self.listeners[port] = sock
        threading.Thread(target=self._accept, args=(port, sock), name=f"nodeport-{port}", daemon=True).start()
        return port

    def release(self, port: int) -> None:
        with self._lock:
            sock = self.listeners.pop(port, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, port: int, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = sock.accept()
            except OSError:
                return
            # connect upstream in the connection's own thread: a slow upstream (a paused source
            # guest whose backlog is full) must not hold up the connections behind it
            threading.Thread(target=self._forward, args=(port, client), daemon=True).start()

    def _forward(self, port: int, client: socket.socket) -> None:
        target = self.resolve(port)
        if target is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(target, timeout=2)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
            src.close()

    def close(self) -> None:
        self._stop.set()
        for port in list(self.listeners):
            self.release(port)
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()
