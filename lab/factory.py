"""From a scenario's ``lab`` section to a lab handle, and from a run's manifest back to a platform.

Every lab kind implements ``LabHandle``; ``HANDLES`` maps the scenario's ``virtproof.lab.kind`` to a
constructor. A run records ``LabHandle.describe()`` in its manifest so that pytest-xdist
workers (and later tools) can ``attach`` to the same lab.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from virtproof.core.errors import UsageError
from virtproof.lab.platform import Platform
from virtproof.scenarios.model import Scenario

Progress = Callable[[str], None]


class LabHandle(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def lab_id(self) -> str: ...

    def plan(self) -> list[str]:
        """Every command and manifest ``up`` would run or apply, without running anything."""
        ...

    def up(self, progress: Progress = ...) -> Platform:
        """Bring the lab up (or connect to it) and return its platform."""
        ...

    def attach(self) -> Platform:
        """A platform handle on a lab that is already up (used by xdist workers)."""
        ...

    def down(self) -> list[str]:
        """Remove everything the lab created; return what was removed."""
        ...

    def status(self) -> list[str]: ...


def _qemu(scenario: Scenario, lab_id: str, persistent: bool) -> LabHandle:
    from virtproof.lab.qemu.lab import QemuLabHandle

    assert scenario.lab.kind == "qemu"
    return QemuLabHandle(scenario.lab, scenario.guest, lab_id, persistent, scenario.name)


def _kubevirt(scenario: Scenario, lab_id: str, persistent: bool) -> LabHandle:
    from virtproof.lab.clusters.handle import KubeVirtLabHandle

    return KubeVirtLabHandle(scenario, lab_id, persistent)


def _sim_kubevirt(scenario: Scenario, lab_id: str, persistent: bool) -> LabHandle:
    from virtproof.lab.controlplane.lab import SimKubeVirtLabHandle

    return SimKubeVirtLabHandle(scenario, lab_id, persistent)


HandleFactory = Callable[[Scenario, str, bool], LabHandle]
# Backends are imported only when their lab kind is used (the kubernetes client is slow to import).
HANDLES: dict[str, HandleFactory] = {"qemu": _qemu, "kind": _kubevirt, "kubeadm": _kubevirt, "existing": _kubevirt,
                                     "sim-kubevirt": _sim_kubevirt}


def open_lab(scenario: Scenario, lab_id: str, persistent: bool = False) -> LabHandle:
    try:
        factory = HANDLES[scenario.lab.kind]
    except KeyError:
        raise UsageError(f"lab kind {scenario.lab.kind!r} has no backend; known: {', '.join(HANDLES)}") from None
    return factory(scenario, lab_id, persistent)


def describe(handle: LabHandle) -> Mapping[str, Any]:
    return {"kind": handle.kind, "lab_id": handle.lab_id}


def leftovers_cleaners() -> list[Callable[[], list[str]]]:
    """Functions that remove what killed runs left behind, one per lab kind that leaves things."""
    from virtproof.lab.clusters.leftovers import leftovers_cleaner
    from virtproof.lab.controlplane.leftovers import clean_leftovers as clean_control_planes
    from virtproof.lab.qemu.lab import clean_leftovers

    # control planes first: their node agents stop their qemu guests before the qemu labs go
    return [clean_control_planes, clean_leftovers, leftovers_cleaner]


def _pointer(scenario: Scenario) -> Path:
    from virtproof.core.statedir import state_root

    return state_root() / "up" / f"{scenario.lab.kind}-{scenario.name}"


def persistent_lab_id(scenario: Scenario) -> str | None:
    """The id of a lab brought up for this scenario with ``virtproof lab up``, if it is still up."""
    try:
        return _pointer(scenario).read_text().strip() or None
    except OSError:
        return None


def remember_persistent(scenario: Scenario, lab_id: str) -> None:
    path = _pointer(scenario)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lab_id + "\n")


def forget_persistent(scenario: Scenario) -> None:
    _pointer(scenario).unlink(missing_ok=True)
