"""What proves a migrated guest intact beyond "it answers": its memory, its kernel's log, its service.

- **Memory**: ``vp-memcheck`` in the guest (``virtproof.lab.images.memcheck``; the micro image has
  it, cloud images get it from cloud-init) fills a region of /dev/shm with a pattern derived from
  (page, generation) and keeps rewriting it; ``verify`` checks every page against what it must
  hold and reports each bad one (offset, guest-physical address, what it holds instead). A page
  found bad is repaired by the checker, so each damage counts once.
- **Kernel**: an oops, BUG, panic, general protection fault, list or stack corruption, RCU stall or
  soft lockup in the guest's ``dmesg`` or serial console that was not there before the move.
  Memory corruption hits kernel data first: a guest can go on answering SSH after its httpd died.
- **Cause**: a corruption the platform's facts explain (a known hypervisor defect that the lab is
  affected by, with its work-around off) is labelled with that defect; one injected by the
  suite's own self-test is ``injected``; anything else is ``unknown``.

Everything here runs guest commands through a ``Runner`` (a function that runs a shell command in
the guest and returns its output), so it does not care how the guest is reached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from virtproof.core.migration import MIGRATION_DEFECT_FACT
from virtproof.scenarios.migration import MemcheckWorkload

Runner = Callable[[str], str]
PID_FILE = "/dev/shm/vp-memcheck.pid"
EXIT_MARK = "vp-memcheck-exit="
VERIFY_TIMEOUT_S = 120
REPRODUCER = "benchmarks/repro_tcg_migration.py"

# A guest kernel that met corrupted memory says so; none of these belongs in a healthy guest's log.
KERNEL_TROUBLE = re.compile(
    r"BUG:|kernel BUG|Oops|list_add corruption|list_del corruption|general protection fault|"
    r"Kernel panic|stack is corrupted|stack-protector|soft lockup|hard LOCKUP|self-detected stall|"
    r"rcu_(?:preempt|sched) detected stall|is not a head!|Bad page|Unable to handle kernel|"
    r"unable to handle page fault|invalid opcode:"
)
_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*")


class MemcheckUnavailable(AssertionError):
    """vp-memcheck could not start or answer in the guest (it is missing, or its workload died)."""


@dataclass(frozen=True)
class BadPage:
    """One page that did not hold what it must, as vp-memcheck found it."""

    where: str  # verify, sweep or sweep-hot
    page: int
    offset: int  # of the first wrong word, in the region
    gpa: int  # guest-physical address of that word, 0 when the checker could not read it
    word: int
    expected_gen: int
    holds_page: int | None
    holds_gen: int | None
    holds: str | None  # "zeros" or "garbage" when it holds no pattern page at all

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> BadPage:
        return cls(
            str(entry.get("where", "?")), int(entry["page"]), int(str(entry["offset"]), 16),
            int(str(entry.get("gpa", "0x0")), 16), int(entry.get("word", 0)), int(entry.get("expected_gen", 0)),
            entry.get("holds_page"), entry.get("holds_gen"), entry.get("holds"),
        )  # fmt: skip

    def describe(self) -> str:
        where = f"page {self.page} at region offset {self.offset:#x}"
        if self.gpa:
            where += f" (guest-physical {self.gpa:#x})"
        if self.holds_page is not None and self.holds_page == self.page:
            what = f"holds generation {self.holds_gen}, expected {self.expected_gen}"
            if self.holds_gen is not None and self.holds_gen < self.expected_gen:
                what += " (a stale copy: a lost write)"
        elif self.holds_page is not None:
            what = f"holds page {self.holds_page} generation {self.holds_gen}"
        else:
            what = f"holds {self.holds or 'something else'}"
        return f"{where}: {what}, word {self.word}, found by {self.where}"


@dataclass(frozen=True)
class MemcheckReport:
    """One ``vp-memcheck verify`` report."""

    seq: int
    time: float
    mib: int
    pages: int
    bad_pages: int  # found by this verify
    sweep_bad_pages: int  # found by the workload's own sweeps since the previous verify
    bad_pages_total: int  # ever
    verify_ms: float
    s_per_gib: float
    pages_written: int
    rate_mibps: float
    bad: tuple[BadPage, ...]  # the first few of this verify and of the sweeps

    @property
    def found(self) -> int:
        """Bad pages found since the previous verify (each damage counts once: the checker repairs it)."""
        return self.bad_pages + self.sweep_bad_pages

    @classmethod
    def parse(cls, text: str) -> MemcheckReport:
        doc = json.loads(text)
        bad = tuple(BadPage.parse(e) for e in [*doc.get("bad", []), *doc.get("sweep_bad", [])])
        return cls(
            int(doc["seq"]), float(doc["time"]), int(doc["mib"]), int(doc["pages"]), int(doc["bad_pages"]),
            int(doc["sweep_bad_pages"]), int(doc["bad_pages_total"]), float(doc["verify_ms"]),
            float(doc["s_per_gib"]), int(doc["pages_written"]), float(doc["rate_mibps"]), bad,
        )  # fmt: skip

    def first_bad(self, limit: int = 4) -> str:
        return "; ".join(b.describe() for b in self.bad[:limit])


# --- vp-memcheck in the guest ---------------------------------------------------------------


def start_memcheck(run: Runner, workload: MemcheckWorkload, rate_mibps: float | None = None,
                   idle: bool = False) -> str:  # fmt: skip
    """(Re)start the workload, at ``rate_mibps`` instead of the workload's (0: flat out), or ``idle``
    (fill once, never rewrite: a guest that dirties nothing); returns its pid once it is filled."""
    rate = "idle" if idle else f"{workload.rate_mibps if rate_mibps is None else rate_mibps:g}"
    out = run(
        "vp-memcheck stop >/dev/null 2>&1; "
        f"vp-memcheck run -m {workload.mib} -r {rate} -H {workload.hot_pages} </dev/null >/dev/null 2>&1"
        f" && cat {PID_FILE} || echo vp-memcheck-failed"
    )
    pid = out.strip().splitlines()[-1] if out.strip() else ""
    if not pid.isdigit():
        raise MemcheckUnavailable(f"vp-memcheck did not start in the guest: {out.strip()[-300:] or 'no output'}")
    return pid


def verify_memcheck(run: Runner) -> MemcheckReport:
    """Verify every page now; the report (raises MemcheckUnavailable if the checker cannot answer)."""
    out = run(f"vp-memcheck verify -t {VERIFY_TIMEOUT_S} 2>&1; echo {EXIT_MARK}$?")
    body, _, status = out.rpartition(EXIT_MARK)
    if status.strip() not in ("0", "1"):
        raise MemcheckUnavailable(f"vp-memcheck verify failed (exit {status.strip()}): {body.strip()[-300:]}")
    try:
        return MemcheckReport.parse(body.strip().splitlines()[-1])
    except (ValueError, KeyError, IndexError) as exc:
        raise MemcheckUnavailable(f"vp-memcheck verify printed no report ({exc}): {body.strip()[-300:]}") from exc


def corrupt_memcheck(run: Runner, page: int, how: str) -> str:
    """Damage ``page`` of the region behind the workload's back (the detector's self-test)."""
    return run(f"vp-memcheck corrupt -P {page} -x {how} 2>&1").strip()


def stop_memcheck(run: Runner) -> None:
    run("vp-memcheck stop >/dev/null 2>&1; true")


# --- the guest kernel's log -----------------------------------------------------------------

DMESG = "dmesg 2>/dev/null || sudo -n dmesg 2>/dev/null || true"  # cloud images restrict dmesg to root


def kernel_trouble(text: str) -> list[str]:
    """Lines of a kernel log that say the kernel met corrupted state, each once, in order."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        if KERNEL_TROUBLE.search(line):
            seen.setdefault(_TIMESTAMP.sub("", line).strip(), line.strip())
    return list(seen.values())


def trouble_key(line: str) -> str:
    """A trouble line without its timestamp: the same message in dmesg and on the console."""
    return _TIMESTAMP.sub("", line).strip()


# --- what caused it ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    label: str  # the ``cause`` sample label: a defect id, ``injected`` or ``unknown``
    evidence: str  # one sentence for the failure message


UNKNOWN = Cause("unknown", "no known platform defect explains it")
INJECTED = Cause("injected", "damaged on purpose by the suite's inject_corruption self-test")


def defect_cause(facts: Mapping[str, object]) -> Cause:
    """The platform's known migration defect when its facts say the lab is exposed to it."""
    defect = facts.get(MIGRATION_DEFECT_FACT)
    if not isinstance(defect, Mapping) or not defect.get("affected") or defect.get("workaround_active"):
        return UNKNOWN
    ident = str(defect.get("id", "defect"))
    evidence = (f"{ident}: {defect.get('reason', '')} (fixed in {defect.get('fixed_in', '?')}); "
                f"reproduced without virtproof by {REPRODUCER}")  # fmt: skip
    return Cause(ident, evidence)
