"""How a live migration should run: the policy vocabulary scenarios write and platforms honour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MigrationMode = Literal["precopy", "auto_converge", "postcopy"]


@dataclass(frozen=True)
class MigrationPolicy:
    """How a live migration should run. Fields a platform cannot honour are capability skips."""

    mode: MigrationMode = "precopy"
    bandwidth_mibps: int | None = None
    downtime_limit_ms: int | None = None
    timeout_s: float = 120.0


def policy_label(policy: MigrationPolicy) -> str:
    """``precopy``, ``precopy-bw32-dt50``, ``postcopy``...: the ``policy`` sample label."""
    parts: list[str] = [policy.mode]
    if policy.bandwidth_mibps:
        parts.append(f"bw{policy.bandwidth_mibps}")
    if policy.downtime_limit_ms:
        parts.append(f"dt{policy.downtime_limit_ms}")
    return "-".join(parts)


# A platform's ``facts()`` may carry this key: a known defect of its hypervisor that corrupts
# migrated guests, as a mapping with at least ``id`` (e.g. ``qemu-tcg-dirty-bitmap``), ``affected``
# (the lab's guests would hit it) and ``workaround_active``. The migration suite names it as the
# cause of a corruption it detects when the lab is affected and the work-around is off.
MIGRATION_DEFECT_FACT = "migration_defect"
