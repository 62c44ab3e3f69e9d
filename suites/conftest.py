"""Fixtures every suite uses, on top of ``run_dir``, ``scenario`` and ``platform`` (which
``virtproof run`` provides through its ``virtproof.suite_session`` plugin).

- ``sink``: the run's sample store.                - ``record``: append a Sample as it happens.
- ``guest_access``: user, key, pinned host key.    - ``vm_factory``: boots VMs, removes them after.
- ``platform_latencies`` (autouse): at the end, the platform's own per-VM phase latencies
  (KubeVirt's vmiLatency phases), where it reports them, become samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.lab.platform import (
    Capability,
    CapabilityMissing,
    GuestAccess,
    LatencyReporting,
    Platform,
    feature,
    require,
)
from virtproof.reports.results import SampleSink
from virtproof.scenarios.model import Scenario
from virtproof.suites.factory import Recorder, VMFactory


@pytest.fixture(autouse=True)
def _capabilities(request: pytest.FixtureRequest) -> None:
    """Skip a test whose ``capability`` marker names something the platform lacks."""
    names = [str(n) for mark in request.node.iter_markers("capability") for n in mark.args]
    if not names:
        return
    plat: Platform = request.getfixturevalue("platform")
    try:
        require(plat, *(Capability(n) for n in names))
    except CapabilityMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def sink(run_dir: Path) -> SampleSink:
    return SampleSink(run_dir)


@pytest.fixture(scope="session")
def record(sink: SampleSink, platform: Platform) -> Recorder:
    return Recorder(sink, {"platform": platform.name, "accel": platform.accel})


@pytest.fixture(scope="session", autouse=True)
def platform_latencies(platform: Platform, record: Recorder) -> Iterator[None]:
    """After the session: each VM's phase latencies as ``vmi_latency.<Phase>_ms`` samples."""
    yield
    if Capability.PLATFORM_LATENCIES not in platform.capabilities:
        return
    reporting = feature(platform, LatencyReporting, Capability.PLATFORM_LATENCIES)
    for vm, phases in sorted(reporting.vm_latencies().items()):
        for phase, value in phases.items():
            record(f"vmi_latency.{phase}_ms", value, "ms", vm=vm, time_source="platform")


@pytest.fixture(scope="session")
def guest_access(platform: Platform, scenario: Scenario) -> GuestAccess:
    return platform.guest_access(scenario.guest.image)


@pytest.fixture
def vm_factory(platform: Platform, scenario: Scenario, request: pytest.FixtureRequest) -> Iterator[VMFactory]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "w0")
    suite = Path(str(request.node.fspath)).stem.removeprefix("test_")
    factory = VMFactory(platform, scenario.guest, prefix=f"{suite}-{worker}")
    yield factory
    factory.cleanup()
