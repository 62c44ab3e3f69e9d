"""What runs behind a fake VMI: the fake cluster's virt-handler side.

``GuestRunner`` starts, migrates and stops the guest of a VMI. ``NoGuest`` runs nothing (the
CDI tests are API-only: nothing answers on the guest ports).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GuestRequest:
    vmi: str
    namespace: str
    node: str
    image: str  # containerDisk image or DataVolume name
    cpus: int
    memory_mib: int
    scratch_mib: int = 0  # an emptyDisk volume's capacity


class MigrationCancelled(Exception):
    pass


class GuestRunner(Protocol):
    def start(self, req: GuestRequest) -> None:
        """Block until the guest's process runs on ``req.node`` (not until it booted)."""
        ...

    def endpoint(self, vmi: str, port: int) -> tuple[str, int] | None:
        """Where the guest's ``port`` (22 or 80) is reachable now, if it is."""
        ...

    def migrate(self, vmi: str, target_node: str, postcopy: bool, bandwidth_mibps: int | None,
                cancelled: threading.Event) -> str:
        """Move the guest; return the mode used ("PreCopy"/"PostCopy"); raise on failure."""
        ...

    def stop(self, vmi: str) -> None: ...

    def close(self) -> None: ...


class NoGuest:
    """No guest process: phases advance, nothing listens. Migrations take ``migrate_s``."""

    def __init__(self, migrate_s: float = 0.05) -> None:
        self.migrate_s = migrate_s
        self.running: set[str] = set()

    def start(self, req: GuestRequest) -> None:
        self.running.add(req.vmi)

    def endpoint(self, vmi: str, port: int) -> tuple[str, int] | None:
        return None

    def migrate(self, vmi: str, target_node: str, postcopy: bool, bandwidth_mibps: int | None,
                cancelled: threading.Event) -> str:
        if cancelled.wait(self.migrate_s):
            raise MigrationCancelled(vmi)
        return "PostCopy" if postcopy else "PreCopy"

    def stop(self, vmi: str) -> None:
        self.running.discard(vmi)

    def close(self) -> None:
        self.running.clear()

