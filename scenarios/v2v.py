"""The V2V suite's scenario section: which sources go through ``premigrate`` and what verdict
each one's defects call for.

```yaml
suites:
  v2v:
    concurrency: 2            # sources validated at once (bounded by cores at run time)
    target: kubevirt          # also generate + schema-check VirtualMachine/DataVolume
    sources:
      - {fixture: micro-virtio, format: vmdk, expect: ready}
      - {fixture: debian-vmware, expect: blocked, fix: true, expect_fixed: ready}
      - {path: /data/exports/web01.ova, expect: ready}
```

A source is a built fixture (``fixture`` + ``format``) or a file (``path``). With ``fix``, the
source is also validated with ``--fix`` and must then reach ``expect_fixed``. ``count`` is the
number of passes over the list; ``concurrency`` may not exceed the sources in a pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from virtproof.scenarios.base import Strict, SuiteRunner

Fixture = Literal[
    "micro-virtio",
    "micro-novirtio",
    "debian-clean",
    "debian-vmware",
    "debian-netpinned",
    "debian-ova",
    "debian-ova-tampered",
    "grub-bios-clean",
    "grub-bios-vmware",
    "grub-uefi-clean",
    "grub-uefi-vmware",
    "windows-virtio",
    "windows-vmware",
]
VerdictName = Literal["ready", "needs-fixes", "blocked"]


class V2VSource(Strict):
    fixture: Fixture | None = None
    path: str | None = None
    format: Literal["raw", "qcow2", "vmdk", "vhdx", "vpc"] = "raw"
    expect: VerdictName | None = None
    fix: bool = False
    expect_fixed: VerdictName = "ready"

    @model_validator(mode="after")
    def _one_origin(self) -> V2VSource:
        if (self.fixture is None) == (self.path is None):
            raise ValueError("give exactly one of fixture or path")
        if self.fixture and self.fixture.startswith("debian-ova") and self.format != "raw":
            raise ValueError("an OVA fixture has no format choice")
        return self

    @property
    def label(self) -> str:
        if self.fixture:
            return f"{self.fixture}-{self.format}" if not self.fixture.startswith("debian-ova") else self.fixture
        return str(self.path)


class V2VSuite(SuiteRunner):
    """Run ``virtproof premigrate`` over ``sources`` and check each verdict."""

    sources: list[V2VSource] = Field(min_length=1)
    target: Literal["qemu", "kubevirt"] = "qemu"
    bus: Literal["virtio", "scsi"] = "virtio"
    fix_method: Literal["native", "v2v"] = "native"
    keep_mac: bool = False
    boot_timeout_s: float = Field(300.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _concurrency_not_above_count(self) -> V2VSuite:  # overrides SuiteRunner's rule
        if self.concurrency > len(self.sources) * self.count:
            raise ValueError(
                f"concurrency ({self.concurrency}) is more than the sources to validate "
                f"({len(self.sources) * self.count})"
            )
        return self
