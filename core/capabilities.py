"""Features a platform may or may not offer: the rows of the report's feature-parity matrix.

Scenarios, labs, suites and reports all speak of them, so they live here, where nothing of
theirs is imported.
"""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    """A platform feature. A suite that needs one the platform lacks is skipped with that reason."""

    BOOT = "boot"
    LIVE_MIGRATION = "live_migration"
    POST_COPY = "post_copy"
    AUTO_CONVERGE = "auto_converge"
    MIGRATION_BANDWIDTH_LIMIT = "migration_bandwidth_limit"
    MIGRATION_DOWNTIME_LIMIT = "migration_downtime_limit"
    NODE_DRAIN = "node_drain"
    DISK_IMPORT = "disk_import"
    CPU_HOTPLUG = "cpu_hotplug"
    HA_RESTART = "ha_restart"
    HOST_METRICS = "host_metrics"
    # The platform's own fault hooks for the migration fault tests (link down, kill an end).
    FAULT_INJECTION = "fault_injection"
    # The platform reports per-VM phase latencies from its own records (KubeVirt vmiLatency).
    PLATFORM_LATENCIES = "platform_latencies"
    # The control plane's own request counters (kube-apiserver's apiserver_request_total).
    API_METRICS = "api_metrics"
