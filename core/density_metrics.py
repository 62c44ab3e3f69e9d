"""The density suite's metric names, written once.

- Step metrics (``StepMetric``, ``STEP_*``): what a scenario's ``stop_when`` condition looks at
  per step of a ramp (``virtproof.scenarios.density``); ``virtproof.suites.engines.density_stats``
  computes them.
- Recorded metrics (``density.*``): the samples the ramp records
  (``virtproof.suites.engines.density``) and the reports, benchmarks and gates read.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# What a stop condition can look at, per step. Time-to-SSH statistics cover the step's own
# guests; a guest that never answered counts as infinitely slow. The names are the scenario
# file's spelling; the ``STEP_*`` constants below are checked against them by mypy.
StepMetric = Literal[
    "p50_time_to_ssh_s",
    "p95_time_to_ssh_s",
    "max_time_to_ssh_s",
    "failed_boots",
    "lost_vms",
    "host_memory_fraction",
    "host_cpu_fraction",
    "idle_host_cpu_fraction",
    "harness_cpu_fraction",
]
STEP_METRICS: tuple[str, ...] = get_args(StepMetric)

STEP_P50_TIME_TO_SSH_S: Final[StepMetric] = "p50_time_to_ssh_s"
STEP_P95_TIME_TO_SSH_S: Final[StepMetric] = "p95_time_to_ssh_s"
STEP_MAX_TIME_TO_SSH_S: Final[StepMetric] = "max_time_to_ssh_s"
STEP_FAILED_BOOTS: Final[StepMetric] = "failed_boots"
STEP_LOST_VMS: Final[StepMetric] = "lost_vms"
STEP_HOST_MEMORY_FRACTION: Final[StepMetric] = "host_memory_fraction"
STEP_HOST_CPU_FRACTION: Final[StepMetric] = "host_cpu_fraction"
STEP_IDLE_HOST_CPU_FRACTION: Final[StepMetric] = "idle_host_cpu_fraction"
STEP_HARNESS_CPU_FRACTION: Final[StepMetric] = "harness_cpu_fraction"

# Recorded samples. Per guest:
TIME_TO_SSH_S: Final = "density.time_to_ssh_s"  # labels step, vms_running (the step's target)
BOOT_FAILED: Final = "density.boot_failed"
GUEST_USED_MIB: Final = "density.guest_used_mib"  # per sampled guest, as the guest sees it
VM_OVERHEAD_MIB: Final = "density.vm_overhead_mib"  # qemu RSS minus the guest's used RAM
VM_OVERHEAD_PRIVATE_MIB: Final = "density.vm_overhead_private_mib"
# per step:
VMS_RUNNING: Final = "density.vms_running"
LOST_VMS: Final = "density.lost_vms"
HOST_MEMORY_FRACTION: Final = "density.host_memory_fraction"
HOST_CPU_FRACTION: Final = "density.host_cpu_fraction"  # while the step booted
IDLE_HOST_CPU_FRACTION: Final = "density.idle_host_cpu_fraction"  # in the settle window
IDLE_VM_CPU_FRACTION: Final = "density.idle_vm_cpu_fraction"
QEMU_RSS_MIB: Final = "density.qemu_rss_mib"
HARNESS_CPU_FRACTION: Final = "density.harness_cpu_fraction"  # of all cores
HARNESS_CPU_SHARE: Final = "density.harness_cpu_share"  # of the host's busy CPU
HARNESS_THREADS: Final = "density.harness_threads"
HOST_LOAD1: Final = "density.host_load1"
# per ramp:
PRIMER_TIME_TO_SSH_S: Final = "density.primer_time_to_ssh_s"
STOP_REASON: Final = "density.stop_reason"  # value: guests running; label reason
CAPACITY_VMS: Final = "density.capacity_vms"
