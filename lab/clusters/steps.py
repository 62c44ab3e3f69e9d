"""Idempotent, logged, retried steps: a ``check`` that says it is done, a ``run`` that does it.

A step runs on an ``Executor`` (a local subprocess, or SSH to a host). ``run_steps`` skips a
step whose check succeeds, retries a failing run up to ``retries`` times with backoff, checks
again afterwards, and raises ``StepFailed`` naming the step, the host and the output tail.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("virtproof.lab.clusters")


class StepFailed(RuntimeError):
    """A step failed after its retries; the message names the step, where, and why."""


@dataclass(frozen=True)
class Result:
    status: int
    output: str


@dataclass(frozen=True)
class Step:
    name: str
    run: str  # a shell script
    check: str | None = None  # exit 0: already done, skip
    stdin: str | None = None  # e.g. a manifest for `kubectl apply -f -`
    retries: int = 0
    timeout_s: float = 600.0
    host: str = "local"

    def describe(self) -> list[str]:
        lines = [f"# step {self.name} on {self.host}" + (f" (retries {self.retries})" if self.retries else "")]
        if self.check:
            lines.append(f"#   skipped when: {self.check}")
        lines.append(self.run if self.stdin is None else f"{self.run} <<'EOF'")
        if self.stdin is not None:
            lines.extend(self.stdin.rstrip("\n").splitlines())
            lines.append("EOF")
        return lines


class Executor(Protocol):
    name: str

    def execute(self, script: str, stdin: str | None, timeout_s: float) -> Result: ...


@dataclass
class LocalExecutor:
    name: str = "local"
    env: dict[str, str] | None = None

    def execute(self, script: str, stdin: str | None, timeout_s: float) -> Result:
        try:
            proc = subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, text=True,
                                  timeout=timeout_s, env=self.env, check=False)
        except subprocess.TimeoutExpired:
            return Result(124, f"timed out after {timeout_s:.0f} s")
        return Result(proc.returncode, (proc.stdout + proc.stderr)[-4000:])


@dataclass
class StepLog:
    """What ``run_steps`` did: (step, outcome) pairs; outcome is 'done', 'skipped' or 'retried N'."""

    entries: list[tuple[str, str]] = field(default_factory=list)


def run_steps(steps: Sequence[Step], executor_for: Callable[[str], Executor],
              backoff_s: float = 2.0, say: Callable[[str], None] = lambda _: None) -> StepLog:
    record = StepLog()
    for step in steps:
        ex = executor_for(step.host)
        if step.check is not None and ex.execute(step.check, None, 60).status == 0:
            log.info("step %s on %s: already done", step.name, ex.name)
            record.entries.append((step.name, "skipped"))
            continue
        say(f"{step.name} on {ex.name}")
        attempt = 0
        while True:
            started = time.monotonic()
            result = ex.execute(step.run, step.stdin, step.timeout_s)
            log.info("step %s on %s: exit %d after %.1f s", step.name, ex.name, result.status,
                     time.monotonic() - started)
            ok = result.status == 0
            if ok and step.check is not None:
                ok = ex.execute(step.check, None, 60).status == 0
                if not ok:
                    result = Result(result.status, result.output + "\n(check still fails after the step ran)")
            if ok:
                record.entries.append((step.name, f"retried {attempt}" if attempt else "done"))
                break
            if attempt >= step.retries:
                tail = "\n".join(result.output.strip().splitlines()[-12:])
                raise StepFailed(f"step {step.name} on {ex.name} failed (exit {result.status}): {tail}")
            attempt += 1
            log.warning("step %s on %s failed (exit %d); retry %d/%d", step.name, ex.name, result.status,
                        attempt, step.retries)
            time.sleep(backoff_s * attempt)
    return record
