"""Fixtures every suite uses. Suites run through ``virtproof run SCENARIO``, which passes the run
directory; from it come the scenario, the lab (attached, never created here) and the sample sink.

- ``run_dir``: the run's directory.            - ``scenario``: the validated Scenario.
- ``platform``: the lab's Platform (session).  - ``record``: append a Sample as it happens.
- ``guest_access``: user, key, pinned host key. - ``vm_factory``: boots VMs, removes them after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.factory import open_lab
from lab.platform import CapabilityMissing, GuestAccess, Platform, require
from reports.results import SampleSink, read_manifest
from scenarios.model import Scenario, load_scenario
from suites.factory import Recorder, VMFactory


@pytest.fixture(scope="session")
def run_dir(pytestconfig: pytest.Config) -> Path:
    value = pytestconfig.getoption("vp_run_dir") or os.environ.get("VIRTPROOF_RUN_DIR")
    if not value:
        pytest.skip("suites run through `virtproof run SCENARIO` (no --vp-run-dir given)")
    return Path(value)


@pytest.fixture(scope="session")
def scenario(run_dir: Path) -> Scenario:
    return load_scenario(run_dir / "scenario.yaml").scenario


@pytest.fixture(scope="session")
def platform(run_dir: Path, scenario: Scenario) -> Iterator[Platform]:
    lab = read_manifest(run_dir)["lab"]
    handle = open_lab(scenario, lab["lab_id"])
    attached = handle.attach()
    yield attached
    record_latencies = getattr(attached, "record_latencies", None)
    if callable(record_latencies):  # KubeVirt: kube-burner vmiLatency phases of every VM it saw
        record_latencies(Recorder(SampleSink(run_dir), {"platform": attached.name, "accel": attached.accel}))
    attached.close()


@pytest.fixture(autouse=True)
def _capabilities(request: pytest.FixtureRequest) -> None:
    """Skip a test whose ``capability`` marker names something the platform lacks."""
    names = [str(n) for mark in request.node.iter_markers("capability") for n in mark.args]
    if not names:
        return
    from lab.platform import Capability

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
