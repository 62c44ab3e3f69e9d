"""Tearing a sim-kubevirt lab down by its id, and ``virtproof lab clean`` for labs whose owner died.

A lab is found three ways, so a SIGKILLed owner leaves nothing unfindable: its directory
``<state root>/controlplane/<lab-id>`` (``owner.json`` says who owns it and whether ``lab up``
made it), its processes (every command line names that directory), and its qemu lab (same id:
namespaces ``vp-<lab-id>-n<i>``, removed by the qemu lab's own teardown).
"""

from __future__ import annotations

import json
import re
import shutil
import time

from virtproof.core.processes import Owner, process_cmdline
from virtproof.core.statedir import state_root
from virtproof.lab.controlplane.agent_contract import PID_FILE
from virtproof.lab.controlplane.components import LabPaths, lab_processes, labs_root, running_pid, stop_pid

COMPONENT_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "virt-api",
                   "virt-controller")
AGENT_GRACE_S = 30.0  # the agent stops its guests on SIGTERM


def write_owner(paths: LabPaths, *, persistent: bool, scenario: str) -> None:
    data = {**Owner.current().as_dict(), "persistent": persistent, "scenario": scenario, "lab_id": paths.lab_id,
            "started": time.time()}
    tmp = paths.root / ".owner.json.tmp"
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(paths.owner_file)


def read_owner(paths: LabPaths) -> dict[str, object] | None:
    try:
        data = json.loads(paths.owner_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stop_agent(paths: LabPaths) -> list[str]:
    pidfile = paths.root / PID_FILE
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return []
    pidfile.unlink(missing_ok=True)
    if paths.marker not in process_cmdline(pid):
        return []
    stop_pid(pid, grace_s=AGENT_GRACE_S)
    return [f"node agent {pid}"]


def teardown(lab_id: str) -> list[str]:
    """Stop the lab's agent and processes, remove its qemu lab and every file. Never raises."""
    paths = LabPaths.for_lab(lab_id)
    removed = stop_agent(paths)
    for name in reversed(COMPONENT_NAMES):
        pid = running_pid(paths, name)
        if pid is not None:
            stop_pid(pid)
            removed.append(f"{name} {pid}")
    for pid in lab_processes(paths.marker):  # anything whose pid file was lost
        name = process_cmdline(pid).split(" ", 1)[0].rsplit("/", 1)[-1]
        stop_pid(pid, grace_s=1.0)
        removed.append(f"{name} {pid} (found by its command line)")
    from virtproof.lab.qemu.lab import teardown as qemu_teardown

    removed += qemu_teardown(lab_id)
    kubevirt_state = state_root() / "kubevirt" / lab_id  # the KubeVirt backend's run keys
    for directory in (kubevirt_state, paths.root):
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(f"dir {directory}")
    return removed


def _dead(paths: LabPaths) -> bool:
    owner = read_owner(paths)
    if owner is None:
        # made a moment ago by an owner that has not written owner.json yet, or broken
        try:
            return time.time() - paths.root.stat().st_mtime > 60
        except OSError:
            return False
    if owner.get("persistent"):
        return False
    recorded = Owner.from_mapping(owner)
    return recorded is None or not recorded.alive()


def leftover_lab_ids() -> list[str]:
    """Labs whose owner is gone (and not made by ``lab up``), and labs whose processes outlive their directory."""
    root = labs_root()
    stale = {p.name for p in root.iterdir() if p.is_dir() and _dead(LabPaths(p))} if root.is_dir() else set()
    marker = re.compile(re.escape(f"{root}/") + r"([^/\s]+)/")
    for pid in lab_processes(f"{root}/"):
        match = marker.search(process_cmdline(pid))
        if match and not (root / match.group(1)).exists():
            stale.add(match.group(1))
    return sorted(stale)


def clean_leftovers() -> list[str]:
    """``virtproof lab clean``: tear down every lab of a dead owner; never touch a live one."""
    removed: list[str] = []
    for lab_id in leftover_lab_ids():
        removed += teardown(lab_id)
    return removed
