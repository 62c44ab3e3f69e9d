"""What this cluster's KubeVirt release and configuration actually allow, never a constant.

Each answer is derived from the running KubeVirt's version (``status.observedKubeVirtVersion``)
and its KubeVirt CR (feature gates, migration configuration), following KubeVirt's sources:

- ``VirtualMachineInstanceMigration.spec.addedNodeSelector`` arrived in v1.6.0 (older API servers
  drop the field silently, so a target node cannot be chosen there).
- ``MigrationPolicy.spec.maxDowntimeMs`` arrived in v1.9.0, and its admitter refuses it unless
  the ``MigrationStallDetection`` feature gate is on
  (pkg/virt-api/webhooks/validating-webhook/admitters/migrationpolicy-admitter.go, v1.9.0).
- Post-copy is used only where the policy (or the cluster's ``migrations``) allows it, and only
  after ``completionTimeoutPerGiB`` times the guest's size in GiB (rounded up) has elapsed
  (pkg/virt-launcher/virtwrap/live-migration-source.go ``shouldTriggerTimeout``,
  manager.go ``getVMIMigrationDataSize``); the default is 150 s per GiB.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ADDED_NODE_SELECTOR_SINCE = (1, 6, 0)
MAX_DOWNTIME_SINCE = (1, 9, 0)
STALL_DETECTION_GATE = "MigrationStallDetection"
DEFAULT_COMPLETION_TIMEOUT_PER_GIB = 150
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``v1.9.0`` (or ``v1.9.0-rc.2``, ``1.9.0``) -> (1, 9, 0); None when it is not a version."""
    match = _VERSION.match(text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


@dataclass(frozen=True)
class KubeVirtFeatures:
    """A KubeVirt installation as the backend sees it."""

    version: tuple[int, int, int] | None
    feature_gates: frozenset[str] = frozenset()
    migrations: Mapping[str, Any] = field(default_factory=dict)  # the CR's spec.configuration.migrations

    @classmethod
    def from_kubevirt_cr(cls, cr: Mapping[str, Any]) -> KubeVirtFeatures:
        status, spec = cr.get("status") or {}, cr.get("spec") or {}
        configuration = spec.get("configuration") or {}
        developer = configuration.get("developerConfiguration") or {}
        version = parse_version(str(status.get("observedKubeVirtVersion") or status.get("operatorVersion") or ""))
        gates = {str(g) for g in developer.get("featureGates") or []}
        return cls(version, frozenset(gates), dict(configuration.get("migrations") or {}))

    def _at_least(self, since: tuple[int, int, int]) -> bool:
        return self.version is not None and self.version >= since

    @property
    def added_node_selector(self) -> bool:
        """Whether a migration can name its target nodes."""
        return self._at_least(ADDED_NODE_SELECTOR_SINCE)

    @property
    def max_downtime(self) -> bool:
        """Whether a MigrationPolicy may set ``maxDowntimeMs``."""
        return self._at_least(MAX_DOWNTIME_SINCE) and STALL_DETECTION_GATE in self.feature_gates

    @property
    def cluster_allows_post_copy(self) -> bool:
        return bool(self.migrations.get("allowPostCopy"))

    @property
    def cluster_allows_auto_converge(self) -> bool:
        return bool(self.migrations.get("allowAutoConverge"))


def post_copy_completion_timeout_per_gib(switch_after_s: int = 1) -> int:
    """The ``completionTimeoutPerGiB`` that makes virt-launcher switch to post-copy after about
    ``switch_after_s`` per GiB of guest (it must elapse *more* than that; 0 would disable it)."""
    return max(1, switch_after_s)
