"""Synchronous QMP for the harness, on one asyncio loop thread shared by all of a platform's VMs.

``qemu.qmp`` is asyncio-only. One background thread runs one event loop; each VM's
``QMPConnection`` lives on it and records every event QEMU sends, with QEMU's own timestamp,
so timelines come from the platform (``RESUME``, ``STOP``, ``MIGRATION``...) where it has them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
from qemu.qmp.message import Message

T = TypeVar("T")


class QMPFailure(RuntimeError):
    """A QMP command failed or the connection is gone."""


@dataclass(frozen=True)
class QMPEvent:
    name: str
    timestamp: float  # QEMU's clock (epoch seconds) from the event itself
    data: Mapping[str, Any] = field(default_factory=dict)


class QMPLoop:
    """An asyncio loop on a daemon thread; ``run`` submits a coroutine and waits for it."""

    def __init__(self, name: str = "qmp-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


class QMPConnection:
    """One VM's QMP session: commands, and every event it has sent so far."""

    def __init__(self, loop: QMPLoop, name: str) -> None:
        self._loop = loop
        self._client = QMPClient(name)
        self._events: list[QMPEvent] = []
        self._cond = threading.Condition()
        self._reader: asyncio.Task[None] | None = None

    def connect(self, socket_path: Path, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect, retrying until the socket appears, ``alive()`` turns false, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if not socket_path.exists():
                if not alive():
                    raise QMPFailure("qemu exited before creating its QMP socket")
                if time.monotonic() > deadline:
                    raise QMPFailure(f"qemu created no QMP socket {socket_path} in {timeout:.0f} s")
                time.sleep(0.002)
                continue
            try:
                self._loop.run(self._connect(str(socket_path)), timeout=max(0.5, deadline - time.monotonic()))
                return
            except (ConnectError, OSError, TimeoutError) as exc:
                if not alive():
                    raise QMPFailure("qemu exited before its QMP socket answered") from exc
                if time.monotonic() > deadline:
                    raise QMPFailure(f"no QMP connection on {socket_path} after {timeout:.0f} s") from exc
                time.sleep(0.005)

    async def _connect(self, path: str) -> None:
        await self._client.connect(path)
        self._reader = asyncio.get_running_loop().create_task(self._read_events())

    async def _read_events(self) -> None:
        async for message in self._client.events:
            self._on_event(message)

    def _on_event(self, message: Message) -> None:
        stamp = message.get("timestamp")
        ts = 0.0
        if isinstance(stamp, dict):
            ts = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
        data = message.get("data")
        event = QMPEvent(str(message["event"]), ts or time.time(), dict(data) if isinstance(data, dict) else {})
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def execute(self, command: str, arguments: Mapping[str, object] | None = None, timeout: float = 30.0) -> Any:
        try:
            return self._loop.run(self._client.execute(command, dict(arguments) if arguments else None), timeout)
        except ExecuteError as exc:
            raise QMPFailure(f"{command}: {exc.error_class}: {exc}") from exc
        except TimeoutError as exc:
            raise QMPFailure(f"{command}: no answer in {timeout:.0f} s") from exc
        except (QMPError, ConnectionError, EOFError, OSError) as exc:
            raise QMPFailure(f"{command}: connection lost: {type(exc).__name__}: {exc}") from exc

    def events(self, name: str | None = None) -> list[QMPEvent]:
        with self._cond:
            return [e for e in self._events if name is None or e.name == name]

    def wait_event(
        self, name: str, timeout: float, predicate: Callable[[QMPEvent], bool] = lambda _: True, after: int = 0
    ) -> QMPEvent:
        """First event ``name`` (at index >= ``after``) that matches; QMPFailure on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[after:]:
                    if event.name == name and predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QMPFailure(f"no {name} event within {timeout:.0f} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        try:
            self._loop.run(self._disconnect(), timeout=5)
        except (QMPError, TimeoutError, RuntimeError, OSError, EOFError):
            return  # qemu has gone: the session is closed either way

    async def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self._client.disconnect()
