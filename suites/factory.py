"""What the suite fixtures hand out: a sample recorder with default labels, and a VM factory."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from virtproof.lab.guest import wait_for_banner
from virtproof.lab.platform import VM, Platform, VMSpec
from virtproof.reports.results import Sample, SampleSink
from virtproof.scenarios.model import Guest


@dataclass(frozen=True)
class Recorder:
    """``record(metric, value, unit, **labels)``: one Sample, appended and fsynced at once."""

    sink: SampleSink
    defaults: dict[str, str]

    def __call__(self, metric: str, value: float, unit: str, **labels: Any) -> Sample:
        merged = {**self.defaults, **{k: str(v) for k, v in labels.items()}}
        return self.sink.record(metric, value, unit, **merged)


@dataclass
class BootedVM:
    vm: VM
    ssh_ready: float  # epoch seconds the SSH banner arrived


@dataclass
class VMFactory:
    """Creates VMs named ``<suite>-<worker>-<n>`` from the scenario's guest; removes them at the end."""

    platform: Platform
    guest: Guest
    prefix: str
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count())
    _vms: list[VM] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(self, **overrides: Any) -> VMSpec:
        name = f"{self.prefix}-{next(self._counter)}"
        base = VMSpec(name=name, image=self.guest.image, cpus=self.guest.cpus, memory_mib=self.guest.memory)
        return replace(base, **overrides)

    def create(self, spec: VMSpec) -> VM:
        """Start a VM (returns once the platform accepted it); it is removed at cleanup."""
        vm = self.platform.create_vm(spec)
        with self._lock:
            self._vms.append(vm)
        return vm

    def boot(self, timeout: float = 180.0, **overrides: Any) -> BootedVM:
        """Create a VM and wait until the platform says running and its SSH banner arrives."""
        spec = self.spec(**overrides)
        deadline = time.monotonic() + timeout
        vm = self.create(spec)
        self.platform.wait_running(vm, timeout)
        return BootedVM(vm, self.wait_ssh(vm, time.time() + max(1.0, deadline - time.monotonic())))

    def wait_ssh(self, vm: VM, deadline: float) -> float:
        """Epoch time the VM's SSH banner arrived; GuestUnreachable after ``deadline`` (epoch)."""
        return wait_for_banner(vm.ssh_endpoint(), max(1.0, deadline - time.time()), alive=vm.alive)

    def delete(self, vm: VM) -> None:
        with self._lock:
            if vm in self._vms:
                self._vms.remove(vm)
        self.platform.delete_vm(vm)

    def cleanup(self) -> None:
        with self._lock:
            vms, self._vms = list(self._vms), []
        for vm in vms:
            self.platform.delete_vm(vm)
