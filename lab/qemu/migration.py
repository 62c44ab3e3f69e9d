"""Live migration between the qemu lab's nodes, over QMP, the way a platform does it.

One move: start a destination qemu on the target node with identical devices and
``-incoming defer`` (not paused: it runs the moment the stream ends), set the capabilities on
both sides (``events``, ``postcopy-ram``, ``auto-converge``) and the source's parameters
(``max-bandwidth``, ``downtime-limit``), ``migrate-incoming tcp:<target address>:<port>`` on the
destination, ``migrate`` to the same URI on the source, then poll ``query-migrate`` until it
ends. Post-copy switches over (``migrate-start-postcopy``) after the first full RAM pass.

It ends in exactly one of these ways, and never waits past the policy's timeout:
- ``completed`` and the destination ``running`` (not ``inmigrate``): the VM now points at the
  destination process and node; the source qemu is stopped.
- failed, cancelled, or the timeout (then ``migrate_cancel``), or the destination qemu died:
  the destination is removed and the guest keeps running on the source (resumed if needed).
  Once the source says ``completed`` it is resumed only if the destination died without ever
  running the guest: resuming it while the destination may run would be two copies of one guest
  (split brain on its disks and address), so a destination that is merely slow to answer is
  waited for, and one that is alive but never reports running makes the guest lost, not doubled.
- the source qemu died: a failed result that says the guest is lost; the destination is removed.

A slow QMP answer (a loaded host) is not a failed migration: ``query-migrate`` and
``query-status`` that time out are asked again until the policy's deadline.

Times: ``total_s`` runs from the request to the destination's RESUME event (QEMU's clock);
``downtime_ms``, ``setup_s`` and ``transferred_mib`` are what ``query-migrate`` reports.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from virtproof.lab.platform import MigrationPolicy, MigrationResult, PlatformError
from virtproof.lab.qemu import l2
from virtproof.lab.qemu.network import NetworkError, exec_prefix, set_node_link
from virtproof.lab.qemu.process import QemuProcess, TapNic, UserNic
from virtproof.lab.qemu.qmp import QMPFailure

if TYPE_CHECKING:
    from virtproof.lab.qemu.platform import QemuPlatform, QemuVM

log = logging.getLogger("virtproof.lab.qemu.migration")

POLL_S = 0.05
QEMU_DEFAULT_BANDWIDTH = 128 * 1024 * 1024  # qemu 7.2's max-bandwidth default, bytes/s
QEMU_DEFAULT_DOWNTIME_MS = 300
RUNNING_WAIT_S = 30.0  # after the source says completed, at most this long for the destination
CANCEL_WAIT_S = 15.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class MigrationProgress:
    """A live view of one migration in flight (what fault tests wait for)."""

    vm: str
    source: str
    target: str
    status: str
    transferred_bytes: int
    destination_pid: int | None


class _InFlight:
    def __init__(self, vm: QemuVM, target: str) -> None:
        self.vm = vm
        self.source_node = vm.node
        self.target = target
        self.source = vm.process
        self.destination: QemuProcess | None = None
        self.status = "starting"
        self.transferred = 0


def _caps(mapping: Mapping[str, bool]) -> dict[str, Any]:
    return {"capabilities": [{"capability": k, "state": v} for k, v in mapping.items()]}


class Migrator:
    """Migrations of one QemuPlatform's VMs; thread-safe (parallel moves run in threads)."""

    def __init__(self, platform: QemuPlatform) -> None:
        self.platform = platform
        self._lock = threading.Lock()
        self._inflight: dict[str, _InFlight] = {}
        self._counter = itertools.count(1)

    # --- what the platform exposes -----------------------------------------------------

    def migrate(self, vm: QemuVM, target: str, policy: MigrationPolicy) -> MigrationResult:
        state = self.platform.state
        if target == vm.node:
            raise PlatformError(f"VM {vm.name} is already on {target}")
        try:
            target_node = state.node(target)
        except KeyError as exc:
            raise PlatformError(str(exc.args[0])) from None
        if not vm.process.alive():
            raise PlatformError(f"VM {vm.name} is not running (its qemu exited)")
        flight = _InFlight(vm, target)
        with self._lock:
            if vm.name in self._inflight:
                raise PlatformError(f"VM {vm.name} is already migrating")
            self._inflight[vm.name] = flight
        try:
            return self._run(flight, target_node.name, policy)
        finally:
            with self._lock:
                self._inflight.pop(vm.name, None)

    def evacuate(self, node: str, timeout: float, parallel: int = 2) -> list[MigrationResult]:
        """Move every VM on ``node`` to the other nodes (in turn), ``parallel`` at a time."""
        others = [n.name for n in self.platform.state.nodes if n.name != node]
        if not others:
            raise PlatformError(f"cannot drain {node}: the lab has no other node")
        with self.platform._lock:
            vms = [vm for vm in self.platform._vms.values() if vm.node == node]
        policy = MigrationPolicy(timeout_s=timeout)
        with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="evacuate") as pool:
            futures = [pool.submit(self.migrate, vm, others[i % len(others)], policy) for i, vm in enumerate(vms)]
            return [f.result() for f in futures]

    def forget(self, vm: QemuVM) -> None:
        """Release the VM's tap and address (its qemu has been stopped). Never raises."""
        node = self._node_state(vm.node)
        for nic in vm.process.cfg.nics:
            if isinstance(nic, TapNic) and node is not None:
                l2.delete_tap(node, nic.ifname)
        if vm.spec.network == "l2":
            try:
                l2.release(self.platform.state, vm.name)
            except (OSError, ValueError):
                pass

    # --- fault injection (tests and the suite's fault tests) -------------------------------

    def progress(self, vm_name: str) -> MigrationProgress | None:
        with self._lock:
            flight = self._inflight.get(vm_name)
        if flight is None:
            return None
        pid = flight.destination.pid if flight.destination is not None else None
        return MigrationProgress(
            vm_name, flight.source_node, flight.target, flight.status, flight.transferred, pid
        )

    def kill_destination(self, vm_name: str) -> int:
        """SIGKILL the destination qemu of ``vm_name``'s migration in flight; return its pid."""
        with self._lock:
            flight = self._inflight.get(vm_name)
        if flight is None or flight.destination is None:
            raise PlatformError(f"VM {vm_name} has no migration destination to kill")
        os.kill(flight.destination.pid, signal.SIGKILL)
        return flight.destination.pid

    def kill_source(self, vm_name: str) -> int:
        """SIGKILL the qemu currently running ``vm_name``; return its pid."""
        with self._lock:
            flight = self._inflight.get(vm_name)
        if flight is not None:
            process = flight.source
        else:
            with self.platform._lock:
                if vm_name not in self.platform._vms:
                    raise PlatformError(f"no VM {vm_name} on this platform")
                process = self.platform._vms[vm_name].process
        os.kill(process.pid, signal.SIGKILL)
        return process.pid

    def set_node_link(self, node: str, up: bool) -> None:
        """Take ``node``'s link to the other nodes down or up (migration streams use it)."""
        try:
            set_node_link(self.platform.state, node, up)
        except (NetworkError, KeyError) as exc:
            raise PlatformError(f"cannot set the link of {node}: {exc}") from exc

    # --- one migration ---------------------------------------------------------------------

    def _node_state(self, name: str) -> Any:
        try:
            return self.platform.state.node(name)
        except KeyError:
            return None

    def _destination_nics(self, vm: QemuVM, target: str) -> tuple[tuple[UserNic | TapNic, ...], list[str]]:
        """The source's NICs on the target node (same MAC); returns (nics, taps created)."""
        node = self.platform.state.node(target)
        nics: list[UserNic | TapNic] = []
        taps: list[str] = []
        for nic in vm.process.cfg.nics:
            if isinstance(nic, TapNic):
                tap = l2.create_tap(self.platform.state, node)
                taps.append(tap)
                nics.append(TapNic(tap, nic.mac, nic.model))
            else:
                ports = self.platform._ports(node.address, len(nic.forwards))
                forwards = tuple((port, guest) for port, (_, guest) in zip(ports, nic.forwards, strict=True))
                nics.append(UserNic(node.address, forwards, nic.model, nic.mac))
        return tuple(nics), taps

    def _run(self, flight: _InFlight, target: str, policy: MigrationPolicy) -> MigrationResult:
        vm, source = flight.vm, flight.source
        requested = time.time()
        deadline = time.monotonic() + policy.timeout_s
        node = self.platform.state.node(target)
        taps: list[str] = []
        destination: QemuProcess | None = None

        def result(ok: bool, finished: float, info: Mapping[str, Any], error: str | None) -> MigrationResult:
            ram = info.get("ram") or {}
            setup = info.get("setup-time")
            downtime = info.get("downtime")
            transferred = ram.get("transferred")
            return MigrationResult(
                vm=vm.name,
                source=flight.source_node,
                target=target,
                ok=ok,
                mode=policy.mode,
                started=requested,
                finished=finished,
                total_s=finished - requested,
                setup_s=setup / 1000 if isinstance(setup, int | float) else None,
                downtime_ms=float(downtime) if isinstance(downtime, int | float) and ok else None,
                transferred_mib=transferred / MIB if isinstance(transferred, int | float) else None,
                error=error,
                time_source="platform",
            )

        def abandon_destination() -> None:
            if destination is not None:
                destination.stop(timeout=3)
            for tap in taps:
                l2.delete_tap(node, tap)

        try:
            nics, taps = self._destination_nics(vm, target)
            cfg = replace(
                source.cfg,
                directory=vm.directory / f"incoming-{next(self._counter)}",
                incoming="defer",
                start_paused=False,
                nics=nics,
            )
            destination = QemuProcess(cfg, self.platform._qmp_loop(), exec_prefix(node))
            flight.destination = destination
            destination.connect(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            postcopy = policy.mode == "postcopy"
            destination.qmp.execute("migrate-set-capabilities", _caps({"events": True, "postcopy-ram": postcopy}))
            source.qmp.execute(
                "migrate-set-capabilities",
                _caps({"events": True, "postcopy-ram": postcopy, "auto-converge": policy.mode == "auto_converge"}),
            )
            bandwidth = policy.bandwidth_mibps * MIB if policy.bandwidth_mibps else QEMU_DEFAULT_BANDWIDTH
            source.qmp.execute(
                "migrate-set-parameters",
                {"max-bandwidth": bandwidth, "downtime-limit": policy.downtime_limit_ms or QEMU_DEFAULT_DOWNTIME_MS},
            )
            port = self.platform._ports(node.address, 1)[0]
            uri = f"tcp:{node.address}:{port}"
            destination.qmp.execute("migrate-incoming", {"uri": uri})
            source.qmp.execute("migrate", {"uri": uri})
        except (QMPFailure, NetworkError, OSError) as exc:
            abandon_destination()
            if not source.alive():
                return result(False, time.time(), {}, f"source qemu exited: guest lost ({exc})")
            self._ensure_running(source)
            return result(False, time.time(), {}, f"could not start the migration: {exc}")

        outcome = self._watch(flight, destination, policy, deadline)
        if outcome.error is None:
            running = self._wait_destination_running(destination, deadline)
            if running is None:
                # The source has handed the guest over (completed). Resuming it is safe only if the
                # destination never ran the guest: it exited without a RESUME. A live destination
                # may be running it (its QMP silent): it is stopped and the guest counts as lost.
                error = "destination did not reach running after the source completed"
                never_ran = not destination.alive() and not destination.qmp.events("RESUME")
                outcome = _Outcome(outcome.info, error, never_ran and policy.mode != "postcopy")
            else:
                # post-copy resumes the destination before the source completes: the later one ends it
                done = [e.timestamp for e in source.qmp.events("MIGRATION") if e.data.get("status") == "completed"]
                finished = max([running, *done])
                self._switch(vm, source, destination, target)
                vm.timeline.add(f"migrated:{target}", finished, "platform")
                return result(True, finished, outcome.info, None)
        # failure: keep the guest where it is, if it still exists
        abandon_destination()
        error = outcome.error or "failed"
        if not source.alive():
            return result(False, time.time(), outcome.info, f"{error}; source qemu exited: guest lost")
        if outcome.source_usable:
            resumed = self._ensure_running(source)
            if not resumed:
                error += "; the source could not be resumed: guest lost"
        else:
            error += "; guest lost (it had switched over to the destination)"
        return result(False, time.time(), outcome.info, error)

    def _watch(
        self, flight: _InFlight, destination: QemuProcess, policy: MigrationPolicy, deadline: float
    ) -> _Outcome:
        source = flight.source
        info: Mapping[str, Any] = {}
        postcopy_started = False
        while True:
            if not source.alive():
                return _Outcome(info, f"source qemu (pid {source.pid}) exited during the migration", False)
            try:
                info = source.qmp.execute("query-migrate", timeout=5) or {}
            except QMPFailure as exc:
                if not source.alive():
                    continue
                if time.monotonic() <= deadline:  # a slow answer on a loaded host: ask again
                    log.info("query-migrate: %s", exc)
                    continue
                switched = str(info.get("status", "")).startswith("postcopy") or postcopy_started
                return _Outcome(info, f"query-migrate: {exc}", not switched)
            status = str(info.get("status", "none"))
            flight.status = status
            flight.transferred = int((info.get("ram") or {}).get("transferred", 0))
            switched = status.startswith("postcopy")
            if status == "completed":
                return _Outcome(self._final_info(source, info), None, True)
            if status in ("failed", "cancelled"):
                return _Outcome(info, f"migration {status}: {info.get('error-desc', 'no reason given')}", True)
            if not destination.alive():
                reason = f"destination qemu (pid {destination.pid}) exited during the migration"
                if switched:
                    return _Outcome(info, reason, False)
                return self._cancel(source, info, reason)
            if time.monotonic() > deadline:
                reason = f"not finished after {policy.timeout_s:g} s (status {status})"
                if switched:
                    return _Outcome(info, reason, False)
                return self._cancel(source, info, reason)
            first_pass_done = int((info.get("ram") or {}).get("dirty-sync-count", 0)) >= 2
            if policy.mode == "postcopy" and not postcopy_started and status == "active" and first_pass_done:
                try:
                    source.qmp.execute("migrate-start-postcopy")
                    postcopy_started = True
                except QMPFailure as exc:
                    log.info("migrate-start-postcopy: %s", exc)
            time.sleep(POLL_S)

    def _final_info(self, source: QemuProcess, info: Mapping[str, Any]) -> Mapping[str, Any]:
        """query-migrate once qemu has filled in the completed migration's times.

        qemu sets the status to completed a moment before it computes total-time and downtime;
        a query in between reads zeros.
        """
        end = time.monotonic() + 2.0
        while not info.get("total-time") and time.monotonic() < end:
            time.sleep(0.01)
            try:
                info = source.qmp.execute("query-migrate", timeout=5) or info
            except QMPFailure:
                break
        return info

    def _cancel(self, source: QemuProcess, info: Mapping[str, Any], reason: str) -> _Outcome:
        last = info
        try:
            source.qmp.execute("migrate_cancel", timeout=5)
        except QMPFailure as exc:
            return _Outcome(info, f"{reason}; migrate_cancel failed: {exc}", True)
        end = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < end and source.alive():
            try:
                info = source.qmp.execute("query-migrate", timeout=5) or {}
            except QMPFailure:
                break
            if info.get("status") in ("cancelled", "failed", "completed"):
                break
            time.sleep(POLL_S)
        status = info.get("status")
        if status == "completed":  # it finished just before the cancel landed: not an error
            return _Outcome(info, None, True)
        if "ram" not in info and last.get("ram"):  # qemu reports no ram stats once cancelled: keep the last
            info = {**info, "ram": last["ram"]}
        return _Outcome(info, f"{reason}; cancelled (status {status})", True)

    def _wait_destination_running(self, destination: QemuProcess, deadline: float) -> float | None:
        """Epoch time the destination resumed (its RESUME event), or None if it did not run in time.

        At least ``RUNNING_WAIT_S``, and up to the policy's deadline: a destination whose QMP is
        slow to answer on a loaded host is asked again, never given up on at the first timeout."""
        end = time.monotonic() + max(RUNNING_WAIT_S, deadline - time.monotonic())
        while time.monotonic() < end and destination.alive():
            try:
                status = destination.qmp.execute("query-status", timeout=5).get("status")
            except QMPFailure as exc:
                log.info("destination query-status: %s", exc)
                time.sleep(POLL_S)
                continue
            if status == "running":
                events = destination.qmp.events("RESUME")
                return events[-1].timestamp if events else time.time()
            time.sleep(POLL_S / 2)
        return None

    def _ensure_running(self, source: QemuProcess) -> bool:
        """The source runs the guest again (qemu resumes it after a failed pre-copy; else cont)."""
        end = time.monotonic() + 10
        while time.monotonic() < end and source.alive():
            try:
                status = source.qmp.execute("query-status", timeout=5).get("status")
                if status == "running":
                    return True
                if status in ("postmigrate", "paused"):
                    source.qmp.execute("cont", timeout=5)
            except QMPFailure as exc:
                log.info("resuming the source: %s", exc)
            time.sleep(POLL_S)
        return False

    def _switch(self, vm: QemuVM, source: QemuProcess, destination: QemuProcess, target: str) -> None:
        """Point the VM at its new process and node; stop the source and free its tap."""
        source_node = self._node_state(vm.node)
        vm.process = destination
        vm.node = target
        for nic in destination.cfg.nics:
            if isinstance(nic, UserNic):
                ports = dict((guest, host) for host, guest in nic.forwards)
                vm.ssh = type(vm.ssh)(nic.bind_address, ports.get(22, vm.ssh.port))
                vm.http = type(vm.http)(nic.bind_address, ports.get(80, vm.http.port))
        try:
            (vm.directory / "vm.json").write_text(json.dumps({"name": vm.name, "node": target}))
        except OSError as exc:
            log.info("vm.json: %s", exc)
        source.stop(timeout=3)
        for nic in source.cfg.nics:
            if isinstance(nic, TapNic) and source_node is not None:
                l2.delete_tap(source_node, nic.ifname)


@dataclass(frozen=True)
class _Outcome:
    info: Mapping[str, Any]
    error: str | None
    source_usable: bool  # the guest can go on running on the source
