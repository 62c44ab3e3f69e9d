"""The density ramp against real qemu guests on a one-node lab (96 MiB micro guests, tb-size 32).

Small on purpose (CI budget): two steps of two guests, an interrupt in the middle of a step,
and the host-memory stop. Timings are recorded, never asserted.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from virtproof.lab.factory import open_lab
from virtproof.lab.qemu.platform import QemuPlatform
from virtproof.lab.qemu.process import find_processes
from virtproof.scenarios.model import Scenario, parse_scenario
from virtproof.suites.engines.density import DensityRamp

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.xdist_group("density")]

LAB = """\
name: density-test
lab: {kind: qemu, nodes: 1, accel: tcg, tb_size_mib: 32}
guest: {image: micro, memory: 96Mi}
suites:
  density:
"""


def make_scenario(body: str) -> Scenario:
    return parse_scenario(LAB + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    "))


@dataclass
class Recorded:
    samples: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, metric: str, value: float, unit: str, **labels: Any) -> None:
        with self.lock:
            self.samples.append((metric, float(value), {k: str(v) for k, v in labels.items()}))

    def values(self, metric: str) -> list[float]:
        return [v for m, v, _ in self.samples if m == metric]

    def labels(self, metric: str) -> list[dict[str, str]]:
        return [labels for m, _, labels in self.samples if m == metric]


@pytest.fixture(scope="module")
def lab(module_root: None) -> Iterator[QemuPlatform]:
    scenario = make_scenario("step: 1\nmax_vms: 1")
    handle = open_lab(scenario, f"dtest-{os.getpid()}-{int(time.time()) % 100000}")
    platform = handle.up()
    assert isinstance(platform, QemuPlatform)
    try:
        yield platform
    finally:
        platform.close()
        handle.down()
        assert not find_processes(f"guest=vp-{handle.lab_id}-"), "qemu processes left after lab down"


def qemu_of(platform: QemuPlatform) -> list[int]:
    return find_processes(f"guest=vp-{platform.state.lab_id}-")


def test_small_ramp_records_every_step(lab: QemuPlatform) -> None:
    scenario = make_scenario(
        """
        step: 2
        max_vms: 4
        primer: true
        settle_s: 1
        overhead_samples: 1
        stop_when:
          - {metric: lost_vms, max: 0}
          - {metric: host_memory_fraction, max: 0.99}
        """
    )
    suite = scenario.suites.density
    assert suite is not None
    record = Recorded()
    outcome = DensityRamp(lab, suite, scenario.guest, record, "dt", lab.guest_access("micro")).run()

    assert outcome.primer_time_to_ssh_s is not None
    assert [s.vms_running for s in outcome.steps] == [2, 4], [s.failed_boots for s in outcome.steps]
    assert outcome.stop_reason == "max_vms" and outcome.capacity_vms == 4
    assert record.values("density.vms_running") == [2, 4]
    assert record.values("density.lost_vms") == [0, 0]
    ssh = record.labels("density.time_to_ssh_s")
    assert sorted((lb["step"], lb["vms_running"]) for lb in ssh) == [("1", "2"), ("1", "2"), ("2", "4"), ("2", "4")]
    assert all(v > 0 for v in record.values("density.time_to_ssh_s"))
    # The qemu process holds more than the guest uses (TCG buffers, devices, qemu itself).
    overhead = record.values("density.vm_overhead_mib")
    assert len(overhead) == 2 and all(0 < v < 1024 for v in overhead), overhead
    assert all(0 < v <= 96 for v in record.values("density.guest_used_mib"))
    assert all(0 < v <= 1 for v in record.values("density.host_memory_fraction"))
    assert all(0 <= v <= 1 for v in record.values("density.host_cpu_fraction"))
    assert all(0 <= v < 1 for v in record.values("density.harness_cpu_fraction"))
    assert record.labels("density.stop_reason") and record.labels("density.stop_reason")[0]["reason"] == "max_vms"
    assert record.values("density.capacity_vms") == [4]
    assert outcome.created == 5 and outcome.leftover == 0
    assert qemu_of(lab) == [], "the ramp left qemu processes running"


def test_a_lost_guest_is_noticed_and_stops_the_ramp(lab: QemuPlatform) -> None:
    scenario = make_scenario(
        """
        step: 1
        max_vms: 3
        primer: false
        settle_s: 0
        overhead_samples: 0
        liveness_timeout_s: 3
        stop_when:
          - {metric: lost_vms, max: 0}
        """
    )
    suite = scenario.suites.density
    assert suite is not None
    record = Recorded()
    ramp = DensityRamp(lab, suite, scenario.guest, record, "dl")
    killed: list[int] = []
    original = ramp._boot_many

    def boot_and_kill_the_first(count: int) -> Any:
        boots = original(count)
        if not killed:  # after step 1, the first guest's qemu dies behind the harness's back
            vm = boots[0].vm
            assert vm is not None
            pid = lab.host_pid(vm)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return boots

    ramp._boot_many = boot_and_kill_the_first  # type: ignore[method-assign]
    outcome = ramp.run()
    assert outcome.stop_reason == "lost_vms", outcome.detail
    assert record.values("density.lost_vms") == [0, 1]
    assert outcome.capacity_vms == 1
    assert outcome.leftover == 0 and qemu_of(lab) == []


def test_interrupt_mid_step_leaves_no_qemu(lab: QemuPlatform) -> None:
    scenario = make_scenario(
        """
        step: 3
        max_vms: 6
        mode: rate
        qps: 4
        primer: false
        settle_s: 0
        overhead_samples: 0
        """
    )
    suite = scenario.suites.density
    assert suite is not None
    record = Recorded()
    ramp = DensityRamp(lab, suite, scenario.guest, record, "di")
    # Ctrl-C as soon as the first guest of the first step runs (it is still booting, and at 4
    # creates per second the others may not be created yet). Never after the ramp returned: a
    # late SIGINT would hit whatever test runs next.
    fired, finished = threading.Event(), threading.Event()

    def interrupt_when_booting() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not finished.is_set():
            if qemu_of(lab):
                fired.set()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_when_booting, daemon=True)
    watcher.start()
    try:
        ramp.run()
    except KeyboardInterrupt:
        pass
    else:
        finished.set()
        pytest.fail(f"the ramp was not interrupted: {ramp.outcome.stop_reason}: {ramp.outcome.detail}")
    finally:
        finished.set()
        watcher.join(5)
    assert fired.is_set()
    assert not ramp.outcome.steps, "the interrupt came after the first step had finished"
    assert ramp.outcome.created >= 1
    assert ramp.outcome.leftover == 0
    assert qemu_of(lab) == [], "an interrupted ramp left qemu processes running"
    assert not list((lab.state.directory / "vms").glob("di-*")), "VM directories left behind"


def test_host_memory_limit_stops_the_ramp_without_crashing(lab: QemuPlatform) -> None:
    scenario = make_scenario(
        """
        step: 2
        max_vms: 4
        primer: false
        stop_when:
          - {metric: host_memory_fraction, max: 0.01}
        """
    )
    suite = scenario.suites.density
    assert suite is not None
    record = Recorded()
    outcome = DensityRamp(lab, suite, scenario.guest, record, "dm").run()
    assert outcome.stop_reason == "host_memory"
    assert "would take host memory to" in outcome.detail
    assert outcome.capacity_vms == 0
    assert record.labels("density.stop_reason")[0]["reason"] == "host_memory"
    assert record.values("density.capacity_vms") == [0]
    assert outcome.created == 0 and qemu_of(lab) == []
