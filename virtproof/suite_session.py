"""The session fixtures ``virtproof run`` gives the suites (loaded with ``-p virtproof.suite_session``).

- ``run_dir``: the run's directory (``--vp-run-dir``).
- ``scenario``: the validated Scenario, as the run recorded it.
- ``platform``: the run's lab, attached (never brought up here), closed at the end.

They live in the front door because attaching to a lab needs the lab factory, which the suites
never import: suites see only the ``Platform`` these fixtures hand them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.lab.factory import open_lab
from virtproof.lab.platform import Platform
from virtproof.reports.results import read_manifest
from virtproof.scenarios.model import Scenario, load_scenario


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
    attached = open_lab(scenario, lab["lab_id"]).attach()
    yield attached
    attached.close()
