"""The density suite: how many guests one node holds before boot times (or anything else) break.

It ramps guests onto one node in steps of ``step`` (up to ``max_vms``), each step booted as a
storm (all at once) or at ``qps`` creates per second, keeping earlier guests running. After a
primer guest (booted and discarded so the first step does not pay for cold caches), each step
records the time to SSH of its guests, the guests running, per-VM memory overhead, host CPU and
memory, the harness's own CPU share, and whether every earlier guest still answers. The ramp
stops at the first step that breaks a ``stop_when`` condition (or at ``max_vms``, or when the
host runs short of memory: ``host_memory``) and records ``density.stop_reason`` and
``density.capacity_vms``. See ``suites/engines/density.py`` for every metric.

**It runs alone.** Its tests are in the xdist group ``density`` (one worker, with
``--dist loadgroup`` as ``virtproof run --workers N`` passes), and the ramp holds the host-wide
node lock (``virtproof.instruments.nodelock``, an flock on ``<state root>/node.lock``) exclusively, so no other
density ramp, run or suite that takes the lock shared shares the node with it. Do not run
other suites' VMs on the same host during a ramp: they change what it measures.

Every guest it starts is deleted when the ramp ends, also on failure and on Ctrl-C/SIGTERM in
the middle of a step.
"""

from __future__ import annotations

import os

import pytest

from virtproof.instruments.nodelock import node_lock
from virtproof.lab.platform import GuestAccess, Platform
from virtproof.scenarios.model import Scenario
from virtproof.suites.engines.density import DensityRamp, RampOutcome, ramp_summary
from virtproof.suites.factory import Recorder

pytestmark = [pytest.mark.capability("boot"), pytest.mark.xdist_group("density")]

NODE_LOCK_TIMEOUT_S = 3600.0


@pytest.fixture(scope="module")
def ramps(scenario: Scenario, platform: Platform, guest_access: GuestAccess, record: Recorder) -> list[RampOutcome]:
    """Run the scenario's ramps (``count`` of them, one after another) under the node lock."""
    suite = scenario.suites.density
    if suite is None:
        pytest.skip("the scenario has no density suite")
    prefix = f"density-{os.environ.get('PYTEST_XDIST_WORKER', 'w0')}"
    outcomes = []
    with node_lock(exclusive=True, timeout=NODE_LOCK_TIMEOUT_S):
        for ramp in range(suite.count):
            density = DensityRamp(
                platform,
                suite,
                scenario.guest,
                record,
                prefix,
                guest_access,
                ramp,
                log=lambda msg: print(f"density: {msg}", flush=True),
            )
            outcome = density.run()
            print(ramp_summary(outcome), flush=True)
            outcomes.append(outcome)
    return outcomes


def test_ramp_reaches_a_stop_reason(ramps: list[RampOutcome]) -> None:
    """Each ramp ended with a reason (a condition, max_vms or host_memory) and a capacity."""
    for outcome in ramps:
        assert outcome.stop_reason, f"ramp {outcome.ramp} ended without a stop reason"
        assert outcome.steps or outcome.stop_reason == "host_memory", f"ramp {outcome.ramp} ran no step"
        assert 0 <= outcome.capacity_vms <= max((s.vms_running for s in outcome.steps), default=0)


def test_every_guest_was_removed(ramps: list[RampOutcome]) -> None:
    for outcome in ramps:
        assert outcome.leftover == 0, f"ramp {outcome.ramp}: {outcome.leftover} guests were not deleted"


def test_primer_booted(ramps: list[RampOutcome], scenario: Scenario) -> None:
    suite = scenario.suites.density
    if suite is None or not suite.primer:
        pytest.skip("primer: false")
    for outcome in ramps:
        assert outcome.primer_time_to_ssh_s is not None, f"ramp {outcome.ramp}: the primer guest never answered SSH"
