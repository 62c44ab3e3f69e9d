"""Which way is better for a metric: lower (times, latencies, downtime, overhead, failures)
or higher (throughput, capacity, rates).

The rule, applied to the metric's last dotted segment and its unit, first match wins:

1. the segment names a cost (``fail``, ``error``, ``downtime``, ``overhead``, ``latency``,
   ``loss``, ``retr``, ``timeout``, ``drop``): **lower** is better;
2. the unit is a rate (ends in ``/s``, or is ``rps``/``iops``/``hz``), or the segment names a
   yield (``throughput``, ``capacity``, ``bandwidth``, ``rate``, ``per_s``, ``iops``,
   ``ops``, ``success``, ``ready``): **higher** is better;
3. anything else (seconds, milliseconds, MiB, counts): **lower** is better.
"""

from __future__ import annotations

from typing import Literal

Direction = Literal["lower", "higher"]

_COST_WORDS = ("fail", "error", "downtime", "overhead", "latency", "loss", "retr", "timeout", "drop")
_YIELD_WORDS = ("throughput", "capacity", "bandwidth", "rate", "per_s", "iops", "ops", "success", "ready")
_RATE_UNITS = ("rps", "iops", "hz")


def better(metric: str, unit: str = "") -> Direction:
    segment = metric.rsplit(".", 1)[-1].lower()
    if any(word in segment for word in _COST_WORDS):
        return "lower"
    unit = unit.strip().lower()
    if unit.endswith("/s") or unit in _RATE_UNITS:
        return "higher"
    if any(word in segment for word in _YIELD_WORDS):
        return "higher"
    return "lower"
