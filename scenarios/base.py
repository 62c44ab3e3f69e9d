"""What every scenario section is built from: the strict base model, the runner settings every
suite has, sizes, and the error a bad scenario raises (file, line, field, message)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from virtproof.core.errors import UsageError


class ScenarioError(UsageError):
    """A scenario file is invalid. ``str()`` is the one-line message shown to users."""

    def __init__(self, path: Path | str, line: int | None, field_path: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field_path = field_path
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        text = f"{where}: {field_path}: {message}" if field_path else f"{where}: {message}"
        super().__init__(text)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SIZE = re.compile(r"^\s*(\d+)\s*(Mi|MiB|M|Gi|GiB|G)?\s*$")


def parse_mib(value: object) -> int:
    """``256`` (MiB), ``"256Mi"``, ``"1Gi"`` -> MiB."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 256 or 256Mi or 1Gi")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit = int(match.group(1)), match.group(2) or "Mi"
            return number * 1024 if unit.startswith("G") else number
    raise ValueError("must be a size such as 256 or 256Mi or 1Gi")


class SuiteRunner(Strict):
    """Rally-style runner settings every suite has."""

    count: int = Field(1, ge=1, le=10_000)
    concurrency: int = Field(1, ge=1, le=1_000)
    timeout_s: float = Field(180.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _concurrency_not_above_count(self) -> SuiteRunner:
        if self.concurrency > self.count:
            raise ValueError(f"concurrency ({self.concurrency}) is more than count ({self.count})")
        return self
