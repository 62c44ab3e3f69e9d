"""Live migration on the qemu lab itself (no suite): L2 addresses, user networking, cancel on timeout."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from virtproof.core.processes import pid_alive
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.platform import MigrationPolicy, PlatformError, VMSpec
from virtproof.lab.qemu import l2
from virtproof.lab.qemu.lab import QemuLabHandle
from virtproof.lab.qemu.platform import QemuPlatform, QemuVM
from virtproof.scenarios.model import Guest, QemuLab

pytestmark = [pytest.mark.qemu, pytest.mark.netns]


@pytest.fixture(scope="module")
def lab(module_root: None, micro_image: GuestImage) -> Iterator[tuple[QemuLabHandle, QemuPlatform]]:
    handle = QemuLabHandle(QemuLab(kind="qemu", nodes=2), Guest(), f"tmiglab-{os.getpid()}")
    platform = handle.up()
    try:
        yield handle, platform
    finally:
        platform.close()
        handle.down()


def _boot(platform: QemuPlatform, name: str, network: str = "l2", memory: int = 160) -> QemuVM:
    vm = platform.create_vm(VMSpec(name, memory_mib=memory, node="node0", network=network))  # type: ignore[arg-type]
    platform.wait_running(vm, 60)
    wait_for_banner(vm.ssh_endpoint(), 120, alive=vm.alive)
    return vm


def _run(platform: QemuPlatform, vm: QemuVM, command: str) -> str:
    with GuestSession(vm.ssh_endpoint(), platform.guest_access("micro")) as session:
        return session.run(command, check=True).stdout.strip()


def test_l2_guest_keeps_its_address_and_state(lab: tuple[QemuLabHandle, QemuPlatform]) -> None:
    _, platform = lab
    vm = _boot(platform, "l2vm")
    segment = l2.segment_of(platform.state)
    assert segment is not None and segment.subnet_index != platform.state.subnet_index
    assert ipaddress.ip_address(vm.ssh_endpoint().host) in segment.network
    assert segment.network.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))
    address = vm.ssh_endpoint()
    first_pid = vm.process.pid
    _run(platform, vm, "echo kept > /root/k")
    result = platform.migrate(vm, "node1", MigrationPolicy())
    assert result.ok, result
    assert (result.source, result.target, vm.node) == ("node0", "node1", "node1")
    assert vm.process.pid != first_pid and vm.process.alive() and not pid_alive(first_pid)
    assert vm.ssh_endpoint() == address
    assert _run(platform, vm, "cat /root/k; cat /sys/class/net/eth0/address") == f"kept\n{vm.process.cfg.nics[0].mac}"
    assert result.transferred_mib and result.downtime_ms is not None and result.total_s > 0
    taps = subprocess.run(
        ["ip", "-n", platform.state.node("node0").netns or "", "-o", "link"], capture_output=True, text=True
    ).stdout
    assert "vpt" not in taps, "the source's tap should be removed after the move"
    platform.delete_vm(vm)
    assert not pid_alive(vm.process.pid)


def test_user_network_guest_moves_its_forwards(lab: tuple[QemuLabHandle, QemuPlatform]) -> None:
    _, platform = lab
    vm = _boot(platform, "uservm", network="user")
    before = vm.ssh_endpoint()
    result = platform.migrate(vm, "node1", MigrationPolicy("postcopy"))
    assert result.ok and result.mode == "postcopy", result
    assert vm.ssh_endpoint().host == platform.state.node("node1").address != before.host
    wait_for_banner(vm.ssh_endpoint(), 120)
    assert _run(platform, vm, "echo ok") == "ok"
    platform.delete_vm(vm)


def test_timeout_cancels_and_the_guest_stays(lab: tuple[QemuLabHandle, QemuPlatform]) -> None:
    _, platform = lab
    vm = _boot(platform, "slowvm")
    pid = vm.process.pid
    started = time.monotonic()
    result = platform.migrate(vm, "node1", MigrationPolicy(bandwidth_mibps=1, timeout_s=3))
    assert not result.ok and "cancelled" in (result.error or ""), result
    assert time.monotonic() - started < 3 + 60  # bounded: never a hang
    assert vm.node == "node0" and vm.process.pid == pid and vm.process.alive()
    assert vm.process.qmp.execute("query-status")["status"] == "running"
    assert _run(platform, vm, "echo alive") == "alive"
    again = platform.migrate(vm, "node1", MigrationPolicy())  # a cancelled move leaves it movable
    assert again.ok, again
    platform.delete_vm(vm)


def test_a_silent_destination_after_completion_is_waited_for_not_doubled(
    lab: tuple[QemuLabHandle, QemuPlatform],
) -> None:
    """The source says completed, then the destination's QMP goes silent for 8 s (SIGSTOP, as a
    starved qemu on a loaded host). The move must wait for it and succeed, never resume the
    completed source: that would run two copies of the guest (split brain)."""
    _, platform = lab
    vm = _boot(platform, "silentvm")
    source_pid = vm.process.pid
    _run(platform, vm, "echo before > /root/k")
    frozen: list[int] = []

    def freeze_on_completion() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            progress = platform.migration_progress(vm)
            if progress is not None and progress.status == "completed" and progress.destination_pid:
                os.kill(progress.destination_pid, signal.SIGSTOP)
                frozen.append(progress.destination_pid)
                try:
                    time.sleep(8)
                finally:
                    os.kill(progress.destination_pid, signal.SIGCONT)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=freeze_on_completion)
    thread.start()
    try:
        result = platform.migrate(vm, "node1", MigrationPolicy(timeout_s=90))
    finally:
        thread.join()
    assert frozen, "the migration never reported completed"
    assert result.ok, result
    assert vm.process.pid == frozen[0] and vm.node == "node1"
    assert not pid_alive(source_pid), "the completed source must not run on"
    assert platform.migration_leftovers(vm) == []
    assert _run(platform, vm, "cat /root/k") == "before"
    platform.delete_vm(vm)


def test_bad_targets_are_errors(lab: tuple[QemuLabHandle, QemuPlatform]) -> None:
    _, platform = lab
    vm = _boot(platform, "badvm", network="user")
    with pytest.raises(PlatformError, match="already on node0"):
        platform.migrate(vm, "node0", MigrationPolicy())
    with pytest.raises(PlatformError, match="no node 'node7'"):
        platform.migrate(vm, "node7", MigrationPolicy())
    platform.delete_vm(vm)


def test_teardown_leaves_nothing(
    root: None, micro_image: GuestImage, leftovers: Callable[[str], list[str]]
) -> None:
    lab_id = f"tmigdown-{os.getpid()}"
    handle = QemuLabHandle(QemuLab(kind="qemu", nodes=2), Guest(), lab_id)
    platform = handle.up()
    try:
        vm = platform.create_vm(VMSpec("v", memory_mib=160, node="node0", network="l2"))
        platform.wait_running(vm, 60)
        segment = l2.segment_of(platform.state)
        assert segment is not None
    finally:
        platform.close()
        handle.down()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert segment.bridge not in links
    assert leftovers(lab_id) == []
