"""Reading Prometheus' text exposition format (what kube-apiserver serves on /metrics).

Only what the suites need: the samples of one metric, with their labels. A line is
``name{label="value",...} number [timestamp]``; ``#`` lines are comments; label values are
escaped with ``\\\\``, ``\\"`` and ``\\n``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


@dataclass(frozen=True)
class PromSample:
    name: str
    labels: dict[str, str]
    value: float


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def samples(text: str, metric: str) -> list[PromSample]:
    """Every sample of ``metric`` in ``text`` (unparseable lines are passed over)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        match = _LINE.match(line)
        if match is None or match.group(1) != metric:
            continue
        labels = {m.group(1): _unescape(m.group(2)) for m in _LABEL.finditer(match.group(3) or "")}
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        if not math.isnan(value):
            out.append(PromSample(metric, labels, value))
    return out
