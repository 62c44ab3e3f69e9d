"""The verdict per source: ``ready``, ``needs-fixes`` or ``blocked``, with the evidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from virtproof.premigrate.bootproof import BootProof
from virtproof.premigrate.findings import Finding

Verdict = Literal["ready", "needs-fixes", "blocked"]
VERDICT_VALUE: dict[Verdict, int] = {"ready": 0, "needs-fixes": 1, "blocked": 2}
# Findings that make a source unusable whatever a boot would show.
BLOCKING_CODES = frozenset(
    {"unsupported-os", "no-os", "encrypted", "arch", "ova-manifest-mismatch", "conversion-failed", "source-hostile"}
)
# Any critical finding with these prefixes blocks: the VMware configuration (snapshots, RDMs,
# shared or independent disks, passthrough...) as the migration toolkits' validations do, and
# a kernel without the drivers at all.
BLOCKING_PREFIXES = ("vmware-", "driver-missing-")
WINDOWS_DRIVER_PREFIX = "windows-driver-missing-"
BOOT_NOT_PROVEN = "boot not proven: virtproof does not boot Windows guests (no Windows image can be run here)"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    unsupported: bool = False


def blocked_by_inspection(findings: list[Finding]) -> list[Finding]:
    return [
        f
        for f in findings
        if f.code in BLOCKING_CODES or (f.severity == "critical" and f.code.startswith(BLOCKING_PREFIXES))
    ]


def decide_windows(findings: list[Finding]) -> Decision:
    """Windows is judged on its drivers and state, never on a boot (none is made)."""
    blocking = blocked_by_inspection(findings)
    if blocking:
        return Decision("blocked", (*[f.message for f in blocking], BOOT_NOT_PROVEN))
    from virtproof.premigrate.windows import driver_phrase

    missing = {f.code.removeprefix(WINDOWS_DRIVER_PREFIX) for f in findings if f.code.startswith(WINDOWS_DRIVER_PREFIX)}
    reasons: list[str] = []
    if missing:
        reasons.append(driver_phrase(bool(missing - {"netkvm"}), "netkvm" in missing))
    reasons += [
        f"{f.code}: {f.fix or f.message}"
        for f in findings
        if f.severity == "critical" and not f.code.startswith(WINDOWS_DRIVER_PREFIX)
    ]
    warnings = [f"{f.code}: {f.message}" for f in findings if f.severity == "warning"]
    if reasons:
        return Decision("needs-fixes", (*reasons, *warnings, BOOT_NOT_PROVEN))
    return Decision("ready", ("virtio-win storage and network drivers are installed", *warnings, BOOT_NOT_PROVEN))


def decide(
    findings: list[Finding],
    boot: BootProof | None,
    resolved: frozenset[str] = frozenset(),
    source_unchanged: bool = True,
) -> Decision:
    """Combine inspection findings, fixes applied and the boot proof into one verdict."""
    reasons: list[str] = []
    if not source_unchanged:
        return Decision("blocked", ("the source changed while it was being validated",))
    blocking = blocked_by_inspection(findings)
    if blocking:
        unsupported = any(f.code == "unsupported-os" for f in blocking)
        return Decision("blocked", tuple(f.message for f in blocking), unsupported)
    if boot is None:
        return Decision("blocked", ("no boot proof was made",))
    if not boot.booted:
        where = boot.stopped or boot.failure or ("timed out" if boot.timed_out else "root file system never mounted")
        causes = [f"{f.code}: {f.message}" for f in findings if f.severity == "critical" and f.code not in resolved]
        return Decision("blocked", (f"does not boot on virtio: {where}", *causes))
    if boot.checksums_bad:
        return Decision("blocked", (f"files changed by the conversion: {', '.join(boot.checksums_bad)}",))
    verdict: Verdict = "ready"
    if not boot.reachable:
        verdict = "needs-fixes"
        reasons.append(f"boots, but no network: {boot.network_down or 'no address and no SSH banner'}")
    if boot.checksums_missing:
        verdict = "needs-fixes"
        reasons.append(f"could not verify files: {', '.join(boot.checksums_missing)}")
    if "login_prompt" not in boot.milestones and boot.ssh_banner is None:
        verdict = "needs-fixes"
        reasons.append("neither a login prompt nor sshd came up")
    open_critical = [f for f in findings if f.severity == "critical" and f.code not in resolved]
    if open_critical:
        verdict = "needs-fixes"
        reasons.extend(f"{f.code}: {f.fix or f.message}" for f in open_critical)
    if verdict == "ready":
        reasons.append(
            "boots on virtio"
            + (", network up" if boot.network else "")
            + (", sshd answers" if boot.ssh_banner else "")
            + (f", {len(boot.checksums_ok)} files verified" if boot.checksums_ok else "")
        )
    return Decision(verdict, tuple(reasons))
