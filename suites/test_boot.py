"""The boot suite: boot ``count`` guests, at most ``concurrency`` at once, and time each one.

Per VM: ``boot.time_to_running_s`` (the platform says running, on its own clock: QMP RESUME on
qemu, the VMI's Running transition minus the VM's creationTimestamp on KubeVirt, whole seconds;
labelled ``clock`` and ``resolution_s``), ``boot.observed_time_to_running_s`` (when the harness
saw it, where that differs), ``boot.time_to_ssh_s`` (the SSH banner arrives) and
``boot.time_to_command_s`` (a command over SSH returns), the last two in seconds from the harness's
create call. Then the guest is
checked: it sees its CPUs and memory, and its disk and network devices are virtio. A guest that
never comes up fails its own test with the serial console tail, and is recorded as
``boot.failed``. All boot tests run in one xdist group so the ``concurrency`` setting, not the
number of workers, decides how many guests boot at once.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtproof.instruments.nodelock import node_lock
from virtproof.lab.guest import GuestSession, HostKeyMismatch
from virtproof.lab.platform import GuestAccess, GuestUnreachable, Platform, PlatformError
from virtproof.scenarios.model import BootSuite, Scenario, load_scenario
from virtproof.suites.factory import Recorder, VMFactory

pytestmark = [pytest.mark.capability("boot"), pytest.mark.xdist_group("boot")]

# The check run in every guest; each line is parsed in ``GuestFacts.parse``.
CHECK = (
    "nproc; sed -n 's/MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo; "
    "basename $(readlink /sys/class/net/eth0/device/driver); "
    "for b in /sys/block/vd* /sys/block/sd*; do "
    "[ -e $b/device/driver ] && basename $(readlink $b/device/driver); done; exit 0"
)


def _boot_count(config: pytest.Config) -> int:
    run_dir = config.getoption("vp_run_dir") or os.environ.get("VIRTPROOF_RUN_DIR")
    if not run_dir:
        return 1
    suite = load_scenario(Path(run_dir) / "scenario.yaml").scenario.suites.boot
    return suite.count if suite else 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "boot_index" in metafunc.fixturenames:
        count = _boot_count(metafunc.config)
        metafunc.parametrize("boot_index", range(count), ids=[f"vm{i}" for i in range(count)])


@dataclass(frozen=True)
class GuestFacts:
    cpus: int
    mem_total_mib: float
    nic_driver: str
    disk_drivers: tuple[str, ...]

    @classmethod
    def parse(cls, output: str) -> GuestFacts:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if len(lines) < 3:
            raise ValueError(f"unexpected guest check output: {output!r}")
        return cls(int(lines[0]), int(lines[1]) / 1024, lines[2], tuple(lines[3:]))


@dataclass(frozen=True)
class BootOutcome:
    vm: str
    node: str
    error: str | None
    console: str
    facts: GuestFacts | None


def _boot_one(
    factory: VMFactory, platform: Platform, access: GuestAccess, record: Recorder, suite: BootSuite, image: str
) -> BootOutcome:
    spec = factory.spec()
    labels = {"vm": spec.name, "image": image}
    vm = None
    try:
        vm = factory.create(spec)
        labels["node"] = vm.node
        created = vm.timeline.get("created")
        assert created is not None
        running = platform.wait_running(vm, suite.timeout_s)
        # On the platform's own clock (KubeVirt: from the VM's creationTimestamp, whole seconds);
        # what the harness saw is its own series.
        span = vm.timeline.span(running.name)
        if span is not None:
            record("boot.time_to_running_s", span.seconds, "s", **labels, time_source=span.source, clock=span.clock,
                   resolution_s=f"{span.resolution_s:g}")
        observed = vm.timeline.span(f"{running.name}_observed")
        if observed is not None:
            record("boot.observed_time_to_running_s", observed.seconds, "s", **labels, time_source="harness",
                   clock="local")
        ready = factory.wait_ssh(vm, created.timestamp + suite.timeout_s)
        record("boot.time_to_ssh_s", ready - created.timestamp, "s", **labels, time_source="harness")
        with GuestSession(vm.ssh_endpoint(), access, timeout=suite.timeout_s) as session:
            session.run("echo ok", check=True)
            record("boot.time_to_command_s", time.time() - created.timestamp, "s", **labels, time_source="harness")
            facts = GuestFacts.parse(session.run(CHECK, check=True).stdout) if suite.check_devices else None
        return BootOutcome(spec.name, vm.node, None, "", facts)
    except (PlatformError, GuestUnreachable, HostKeyMismatch, ValueError) as exc:
        console = vm.console_tail(40) if vm is not None else ""
        record("boot.failed", 1, "count", **labels, reason=str(exc)[:200])
        return BootOutcome(spec.name, labels.get("node", ""), str(exc), console, None)
    finally:
        if vm is not None:
            factory.delete(vm)


@pytest.fixture(scope="module")
def boot_outcomes(
    scenario: Scenario, platform: Platform, guest_access: GuestAccess, record: Recorder
) -> list[BootOutcome]:
    """Boot every guest of the suite (``concurrency`` at once); one outcome per guest, in order."""
    suite = scenario.suites.boot
    if suite is None:
        pytest.skip("the scenario has no boot suite")
    factory = VMFactory(platform, scenario.guest, prefix=f"boot-{os.environ.get('PYTEST_XDIST_WORKER', 'w0')}")
    # Shared: boot runs may overlap each other, but not a density ramp that needs the node alone.
    try:
        with node_lock(exclusive=False), ThreadPoolExecutor(suite.concurrency, thread_name_prefix="boot") as pool:
            futures = [
                pool.submit(_boot_one, factory, platform, guest_access, record, suite, scenario.guest.image)
                for _ in range(suite.count)
            ]
            return [f.result() for f in futures]
    finally:
        factory.cleanup()


def test_guest_boots(boot_outcomes: list[BootOutcome], boot_index: int) -> None:
    outcome = boot_outcomes[boot_index]
    if outcome.error:
        pytest.fail(
            f"{outcome.vm} on {outcome.node} did not come up: {outcome.error}\n"
            f"--- serial console (last 40 lines) ---\n{outcome.console}",
            pytrace=False,
        )


def test_guest_sees_its_shape(boot_outcomes: list[BootOutcome], boot_index: int, scenario: Scenario) -> None:
    outcome = boot_outcomes[boot_index]
    if outcome.facts is None:
        pytest.skip("the guest did not come up, or check_devices is off")
    assert outcome.facts.cpus == scenario.guest.cpus, f"{outcome.vm} sees {outcome.facts.cpus} CPUs"
    # The kernel keeps some memory for itself; the guest must see most of what it was given.
    assert 0.6 * scenario.guest.memory <= outcome.facts.mem_total_mib <= scenario.guest.memory, (
        f"{outcome.vm} sees {outcome.facts.mem_total_mib:.0f} MiB of {scenario.guest.memory} MiB"
    )


def test_guest_devices_are_virtio(boot_outcomes: list[BootOutcome], boot_index: int) -> None:
    outcome = boot_outcomes[boot_index]
    if outcome.facts is None:
        pytest.skip("the guest did not come up, or check_devices is off")
    assert outcome.facts.nic_driver == "virtio_net", f"{outcome.vm}: NIC driver {outcome.facts.nic_driver}"
    assert outcome.facts.disk_drivers, f"{outcome.vm}: no disk seen"
    assert set(outcome.facts.disk_drivers) == {"virtio_blk"}, f"{outcome.vm}: disks on {outcome.facts.disk_drivers}"
