"""Locust users for HTTP load against guests, shared by the migration, density and KubeVirt suites.

Run only as its own process (``virtproof.instruments.load.LocustRun`` does): locust's gevent monkey-patching must
never reach the harness (paramiko, QMP, pytest). Settings come from the environment:

- ``VP_LOCUST_PATHS``: comma-separated paths to GET in turn (default ``/name``, which the micro
  guest's busybox httpd serves).
- ``VP_LOCUST_RATE_PER_USER``: requests per second per user (constant throughput; default 1).
- ``VP_LOCUST_MAX_REQUESTS``: stop the run after this many requests (0: no count bound).
- ``VP_LOCUST_REQUEST_LOG``: if set, one line per request ``<start epoch s> <ms> ok|fail`` so
  the harness can cut any time window (a migration) out of the run.
"""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

import gevent
from locust import HttpUser, constant_throughput, events, task

PATHS = [p for p in os.environ.get("VP_LOCUST_PATHS", "/name").split(",") if p] or ["/name"]
RATE = float(os.environ.get("VP_LOCUST_RATE_PER_USER", "1"))
MAX_REQUESTS = int(os.environ.get("VP_LOCUST_MAX_REQUESTS", "0"))
_log: TextIO | None = None
_environment: Any = None
_count = 0


@events.init.add_listener  # type: ignore[untyped-decorator]
def _open_log(environment: Any, **_: Any) -> None:
    global _log
    path = os.environ.get("VP_LOCUST_REQUEST_LOG")
    if path:
        _log = open(path, "a", buffering=1)  # noqa: SIM115 - closed at quit


@events.request.add_listener  # type: ignore[untyped-decorator]
def _on_request(response_time: float, exception: BaseException | None, **kwargs: Any) -> None:
    global _count
    _count += 1
    if _log is not None:
        start = kwargs.get("start_time") or (time.time() - response_time / 1000)
        _log.write(f"{start:.6f} {response_time:.3f} {'fail' if exception else 'ok'}\n")
    if MAX_REQUESTS and _count == MAX_REQUESTS and _environment is not None and _environment.runner is not None:
        gevent.spawn(_environment.runner.quit)  # not from inside the user's own greenlet


@events.init.add_listener  # type: ignore[untyped-decorator]
def _keep_environment(environment: Any, **_: Any) -> None:
    global _environment
    _environment = environment


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _close_log(**_: Any) -> None:
    if _log is not None:
        _log.close()


class GuestUser(HttpUser):
    """GETs the configured paths at a constant rate; every answer must be 2xx."""

    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        self._next = 0

    @task
    def get(self) -> None:
        path = PATHS[self._next % len(PATHS)]
        self._next += 1
        self.client.get(path, name=path, timeout=5)
