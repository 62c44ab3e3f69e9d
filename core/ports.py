"""Local TCP ports: one the kernel says is free on 127.0.0.1, for a forward or a listener."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).

    Another process may take it before the caller binds it; callers that start a listener on it
    retry or fail clearly.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
