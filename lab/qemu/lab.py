"""Bringing the local qemu lab up and down, and finding what a killed run left behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtproof.core.processes import boot_id, pid_alive, process_cmdline
from virtproof.lab.guest import generate_client_key
from virtproof.lab.images.debs import PackageError
from virtproof.lab.images.store import ImageNotFound, ImageStore
from virtproof.lab.qemu.accel import choose_accel, qemu_available
from virtproof.lab.qemu.network import (
    NetworkError,
    create_network,
    destroy_network,
    list_links,
    list_netns,
    netns_supported,
    node_names,
)
from virtproof.lab.qemu.platform import QemuPlatform, client_key_path
from virtproof.lab.qemu.process import find_processes, kill_by_pidfile
from virtproof.lab.qemu.state import (
    LabState,
    NodeState,
    allocation_lock,
    free_subnet_index,
    lab_dir,
    list_lab_ids,
    token,
)
from virtproof.scenarios.model import Guest, QemuLab

Progress = Callable[[str], None]


class LabError(RuntimeError):
    """The lab could not come up; the message says why."""


@dataclass
class QemuLabHandle:
    """The qemu lab of one scenario. ``up`` returns a platform; ``down`` removes everything."""

    spec: QemuLab
    guest: Guest
    lab_id: str
    persistent: bool = False
    scenario_name: str = ""
    store: ImageStore | None = None

    kind = "qemu"

    def plan(self) -> list[str]:
        tok = token(self.lab_id)
        lines = [f"# qemu lab {self.lab_id}: {self.spec.nodes} node(s), network {self.spec.network}"]
        lines.append(f"virtproof images build {self.guest.image}")
        if self.spec.network == "netns":
            lines += [f"ip link add vpbr{tok} type bridge", f"ip addr add 198.18.<k>.1/24 dev vpbr{tok}"]
            for i in range(self.spec.nodes):
                lines += [
                    f"ip netns add vp-{self.lab_id}-n{i}",
                    f"ip link add vph{tok}{i} type veth peer name vpn{tok}{i} netns vp-{self.lab_id}-n{i}",
                    f"ip -n vp-{self.lab_id}-n{i} addr add 198.18.<k>.{i + 2}/24 dev vpn{tok}{i}",
                ]
        lines.append(f"accel {self.spec.accel}: probe a guest under KVM" if self.spec.accel != "tcg" else "accel tcg")
        if self.spec.tcg_migration_workaround == "auto":
            lines.append("under TCG with qemu < 9.0: guest RAM + 8 KiB (the TCG dirty-bitmap work-around)")
        else:
            lines.append("tcg_migration_workaround: off (qemu < 9.0 TCG migrations may corrupt guests)")
        return lines

    def up(self, progress: Progress = lambda _: None) -> QemuPlatform:
        """Create the nodes and the run's SSH key; on any failure, remove what was made."""
        missing = qemu_available()
        if missing:
            raise LabError(missing)
        if self.spec.network == "netns":
            reason = netns_supported()
            if reason:
                raise LabError(reason)
        store = self.store or ImageStore.default()
        try:
            image = store.get(self.guest.image, progress=progress)
        except (ImageNotFound, PackageError) as exc:
            raise LabError(f"guest image {self.guest.image!r}: {exc}") from exc
        progress(f"choosing the accelerator (accel: {self.spec.accel})")
        try:
            choice = choose_accel(self.spec.accel, image)
        except RuntimeError as exc:
            raise LabError(str(exc)) from exc
        progress(f"accelerator: {choice.accel} ({choice.reason})")
        directory = lab_dir(self.lab_id)
        nodes: tuple[NodeState, ...] = ()
        bridge: str | None = None
        try:
            with allocation_lock():
                if directory.exists():
                    raise LabError(f"lab {self.lab_id} already exists ({directory})")
                index = free_subnet_index(directory)
            state = LabState(
                self.lab_id,
                self.spec.network,
                index,
                tuple(NodeState(n, "") for n in node_names(self.spec.nodes)),
                None,
                None,
                os.getpid(),
                boot_id(),
                self.persistent,
                self.scenario_name,
                choice.accel,
                {
                    "accel_reason": choice.reason,
                    "machine": self.spec.machine,
                    "tb_size_mib": str(self.spec.tb_size_mib),
                    "tcg_migration_workaround": self.spec.tcg_migration_workaround,
                    # The image resolved now is the one every VM of this lab uses (and whose host
                    # key is pinned), even if the image is rebuilt while the lab is up.
                    f"image:{self.guest.image}": str(image.directory),
                },
            )
            state.save()  # recorded before anything is created, so a crash is still cleanable
            progress(f"creating {self.spec.nodes} node(s) ({self.spec.network})")
            nodes, bridge, bridge_addr = create_network(self.lab_id, self.spec.nodes, self.spec.network, index)
            state = LabState(
                self.lab_id,
                self.spec.network,
                index,
                nodes,
                bridge,
                bridge_addr,
                os.getpid(),
                boot_id(),
                self.persistent,
                self.scenario_name,
                choice.accel,
                state.extra,
            )
            state.save()
            generate_client_key(client_key_path(state))
        except (NetworkError, OSError) as exc:
            teardown(self.lab_id)
            raise LabError(f"could not create the lab's nodes: {exc}") from exc
        except BaseException:
            teardown(self.lab_id)
            raise
        return QemuPlatform(state, store)

    def attach(self) -> QemuPlatform:
        try:
            return QemuPlatform(LabState.load(self.lab_id), self.store)
        except (OSError, ValueError) as exc:
            raise LabError(f"no qemu lab {self.lab_id} to attach to: {exc}") from exc

    def down(self) -> list[str]:
        return teardown(self.lab_id)

    def status(self) -> list[str]:
        try:
            state = LabState.load(self.lab_id)
        except (OSError, ValueError):
            return [f"lab {self.lab_id}: not up"]
        lines = [f"lab {self.lab_id}: up, {len(state.nodes)} node(s), accel {state.accel}, network {state.network}"]
        for node in state.nodes:
            lines.append(f"  {node.name}: {node.address}" + (f" (netns {node.netns})" if node.netns else ""))
        for vm_dir in sorted((state.directory / "vms").glob("*")):
            pid = _read_pid(vm_dir)
            running = pid is not None and pid_alive(pid)
            lines.append(f"  vm {vm_dir.name}: {'running' if running else 'stopped'}")
        return lines


def _read_pid(vm_dir: Path) -> int | None:
    for name in ("qemu.pid", "qemu.pid.spawned"):
        try:
            return int((vm_dir / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def teardown(lab_id: str) -> list[str]:
    """Kill the lab's qemu processes, remove its namespaces, links and files. Never raises."""
    removed: list[str] = []
    marker = f"vp-{lab_id}-"
    directory = lab_dir(lab_id)
    for vm_dir in sorted((directory / "vms").glob("*")):
        for pidfile in ("qemu.pid", "qemu.pid.spawned"):
            pid = kill_by_pidfile(vm_dir / pidfile, marker)
            if pid is not None:
                removed.append(f"qemu {pid} ({vm_dir.name})")
    for pid in find_processes(f"guest={marker}"):
        try:
            os.kill(pid, 9)
            removed.append(f"qemu {pid}")
        except ProcessLookupError:
            pass
    try:
        state = LabState.load(lab_id)
        removed += destroy_network(lab_id, state.nodes, state.bridge)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    removed += _sweep_names(lab_id)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    return removed


def _sweep_names(lab_id: str) -> list[str]:
    """Namespaces and links named after the lab that the state file did not list."""
    removed = []
    tok = token(lab_id)
    nodes = [
        NodeState(f"ns{i}", "", ns) for i, ns in enumerate(n for n in list_netns() if n.startswith(f"vp-{lab_id}-"))
    ]
    links = [name for name in list_links() if name.startswith("vp") and tok in name and not name.startswith("vpn")]
    for link in links:
        removed += destroy_network(lab_id, [NodeState("l", "", None, link)], None)
    removed += destroy_network(lab_id, nodes, None)
    return removed


def leftover_lab_ids() -> list[str]:
    """Labs whose owner process is gone and that were not brought up with ``lab up``."""
    stale = []
    for lab_id in list_lab_ids():
        try:
            state = LabState.load(lab_id)
        except (OSError, ValueError, KeyError, TypeError):
            stale.append(lab_id)
            continue
        if not state.persistent and not state.owner_alive():
            stale.append(lab_id)
    return stale


def clean_leftovers() -> list[str]:
    """Remove what killed runs left: their labs, and vp-* namespaces/processes of no live lab."""
    removed: list[str] = []
    for lab_id in leftover_lab_ids():
        removed += teardown(lab_id)
    live = set(list_lab_ids())
    for ns in list_netns():
        if ns.startswith("vp-") and not any(ns.startswith(f"vp-{lab}-") for lab in live):
            lab_id = ns[3:].rsplit("-n", 1)[0]
            removed += teardown(lab_id)
    for pid in find_processes("guest=vp-"):
        cmd = process_cmdline(pid)
        if "guest=vp-kvm-probe" in cmd:
            continue  # another run's accelerator probe: short-lived, removes itself
        if not any(f"guest=vp-{lab}-" in cmd for lab in live):
            try:
                os.kill(pid, 9)
                removed.append(f"qemu {pid} (no live lab)")
            except ProcessLookupError:
                pass
    return removed
