"""nox sessions. They run in the project's .venv (made by scripts/bootstrap): `.venv/bin/nox -s tests`."""

from __future__ import annotations

import sys
from collections.abc import Callable

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
PY = sys.executable  # the interpreter nox runs under: .venv/bin/python


@nox.session
def tests(session: nox.Session) -> None:
    """virtproof's own tests (the README's test command)."""
    session.run(PY, "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy --strict on the whole virtproof package."""
    session.run(PY, "-m", "ruff", "check", ".")
    session.run(PY, "scripts/typecheck")


@nox.session
def run(session: nox.Session) -> None:
    """Run a scenario: nox -s run -- scenarios/quickstart.yaml [virtproof run flags]."""
    args = session.posargs or ["scenarios/quickstart.yaml"]
    session.run(PY, "-m", "virtproof", "run", *args)


@nox.session
def lab(session: nox.Session) -> None:
    """Manage a lab: nox -s lab -- up|down|status|clean|plan SCENARIO."""
    session.run(PY, "-m", "virtproof", "lab", *(session.posargs or ["status", "scenarios/quickstart.yaml"]))


@nox.session
def report(session: nox.Session) -> None:
    """Compare runs: nox -s report -- results/A results/B [-o OUT]."""
    session.run(PY, "-m", "virtproof", "compare", *session.posargs)


BENCHMARKS = {
    "boot": "Bare qemu vs virtproof, median time to SSH (goal: within 5 %).",
    "migration": "256 MiB guest, idle and dirtying: total, qemu downtime, guest-observed downtime, ratio.",
    "density": "The density ramp: capacity and per-step time to SSH, overhead, harness CPU.",
    "v2v": "premigrate per source: inspect, convert (vs bare qemu-img) and boot-proof seconds.",
    "kubevirt": "Paper sim-kubevirt lab: create rate under qps/burst, vmiLatency, watch cost, write-to-record delay.",
    "cloudinit": "Boots a Debian cloud image with virtproof's cloud-init: vp-memcheck, vp-dirty and usleep work.",
    "report": "10 runs, 1,000,000 samples, rendered as one comparison.",
    "controlplane": "sim-kubevirt lab up cold and warm (build cached); etcd and apiserver RSS idle and with N VMs.",
}


def _benchmark(script: str) -> Callable[[nox.Session], None]:
    def bench(session: nox.Session) -> None:
        session.run(PY, script, *session.posargs)

    return bench


for _name, _doc in BENCHMARKS.items():
    _session = _benchmark(f"benchmarks/bench_{_name}.py")
    _session.__doc__ = _doc
    nox.session(name=f"bench_{_name}")(_session)

