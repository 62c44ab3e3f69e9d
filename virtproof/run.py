"""One run: scenario -> run directory -> lab up -> pytest on the suites -> gates and reports -> lab down.

Everything the run creates carries the run id and is torn down in ``finally``, also on test
failures, Ctrl-C (SIGINT) and SIGTERM; the manifest then says ``incomplete``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
import yaml

from virtproof import suites as suites_package
from virtproof.core.errors import EXIT_FAILED, EXIT_LAB, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, UsageError
from virtproof.hostfacts import host_facts, versions
from virtproof.lab.factory import LabHandle, describe, open_lab, persistent_lab_id
from virtproof.lab.platform import Platform
from virtproof.reports.results import RunDirectory, RunStatus, new_run_id
from virtproof.scenarios.model import LoadedScenario

SUITES_DIR = Path(suites_package.__file__).resolve().parent
Say = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    suites: tuple[str, ...] = ()
    results: Path = Path("results")
    workers: int = 1
    baseline: Path | None = None
    max_regression: float | None = None
    pytest_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    exit_code: int
    status: RunStatus


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so ``finally`` blocks tear the lab down."""


@contextmanager
def _signals(received: list[int]) -> Iterator[None]:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        raise Interrupted(f"signal {signum}")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def for_lab(loaded: LoadedScenario, index: int) -> LoadedScenario:
    """A bake-off scenario narrowed to ``labs[index]``: what that lab's run records and runs."""
    scenario = loaded.scenario.for_lab(index)
    body = scenario.model_dump(mode="json", exclude={"labs"})
    text = f"# {loaded.path}, lab {index + 1} of {len(loaded.scenario.labs)}\n" + yaml.safe_dump(body, sort_keys=False)
    return LoadedScenario(loaded.path, text, hashlib.sha256(text.encode()).hexdigest(), scenario)


def suite_paths(loaded: LoadedScenario, selected: Sequence[str]) -> list[Path]:
    enabled = loaded.scenario.suites.enabled()
    names = list(selected) or enabled
    unknown = [n for n in names if n not in enabled]
    if unknown:
        raise UsageError(f"--suite {', '.join(unknown)}: not in {loaded.path} (it has: {', '.join(enabled)})")
    paths = [SUITES_DIR / f"test_{n}.py" for n in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no suite file {missing[0]}")
    return paths


def _pytest_exit_to_status(code: int) -> tuple[int, RunStatus]:
    if code == pytest.ExitCode.OK:
        return EXIT_OK, "passed"
    if code == pytest.ExitCode.TESTS_FAILED:
        return EXIT_FAILED, "failed"
    if code == pytest.ExitCode.INTERRUPTED:
        return EXIT_SIGINT, "incomplete"
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        return EXIT_USAGE, "incomplete"
    return EXIT_FAILED, "failed"


def execute(loaded: LoadedScenario, options: RunOptions, say: Say) -> RunOutcome:
    """Run ``loaded`` end to end; never leaves the lab it created behind."""
    paths = suite_paths(loaded, options.suites)
    run_id = new_run_id()
    scenario = loaded.scenario
    manifest = {
        "scenario": {
            "name": scenario.name,
            "path": str(loaded.path),
            "sha256": loaded.sha256,
            "description": scenario.description,
        },
        "lab": {"kind": scenario.lab.kind},
        "suites": [p.stem.removeprefix("test_") for p in paths],
        "versions": versions(),
        "host": host_facts(),
    }
    run = RunDirectory.create(options.results, run_id, manifest)
    (run.path / "scenario.yaml").write_text(loaded.text)
    say(f"run {run_id}: {scenario.name} -> {run.path}")
    received: list[int] = []
    status: RunStatus = "incomplete"
    exit_code = EXIT_FAILED
    handle: LabHandle | None = None
    owns_lab = False
    platform: Platform | None = None
    try:
        with _signals(received):
            existing = persistent_lab_id(scenario)
            handle = open_lab(scenario, existing or run_id, persistent=existing is not None)
            try:
                if existing:
                    say(f"using lab {existing} (brought up with `virtproof lab up`)")
                    platform = handle.attach()
                else:
                    owns_lab = True
                    platform = handle.up(say)
            except RuntimeError as exc:
                run.update_manifest(error=f"lab could not come up: {exc}")
                say(f"lab could not come up: {exc}")
                return RunOutcome(run.path, EXIT_LAB, "incomplete")
            run.update_manifest(
                lab={**describe(handle), **_lab_facts(platform)},
                platform={
                    "name": platform.name,
                    "accel": platform.accel,
                    "capabilities": sorted(c.value for c in platform.capabilities),
                },
            )
            host = run.manifest()["host"]
            run.update_manifest(host={**host, "accelerator": platform.accel})
            say(f"lab up: {len(platform.nodes())} node(s), accel {platform.accel}; running {len(paths)} suite(s)")
            code = _run_pytest(run.path, paths, options)
            if received:  # pytest turned our SIGTERM into an interrupted session: say which signal
                raise Interrupted(f"signal {received[0]}")
            exit_code, status = _pytest_exit_to_status(code)
            run.update_manifest(status=status)  # the report shows the tests' verdict...
            gates_ok = _finalize(run.path, loaded, options, say)
            if not gates_ok and exit_code == EXIT_OK:
                exit_code, status = EXIT_FAILED, "failed"
                run.update_manifest(status=status)  # ...and a broken gate fails the run
                _finalize(run.path, loaded, options, lambda _: None)
    except KeyboardInterrupt:
        status = "incomplete"
        exit_code = EXIT_SIGTERM if received and received[0] == signal.SIGTERM else EXIT_SIGINT
        say("interrupted: tearing the lab down")
    finally:
        # Teardown must not be interrupted by a second signal.
        with _ignoring_signals():
            if platform is not None:
                platform.close()
            if handle is not None and owns_lab:
                removed = handle.down()
                say(f"lab down: removed {len(removed)} resource(s)")
            if received:
                status = "incomplete"
            run.finish(status)
    return RunOutcome(run.path, exit_code, status)


@contextmanager
def _ignoring_signals() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _lab_facts(platform: Platform) -> dict[str, object]:
    """What the manifest says about the lab: nodes, accelerator, and what the platform tells of itself
    (qemu: network and why this accelerator; KubeVirt: the cluster's versions)."""
    return {"nodes": list(platform.nodes()), "accel": platform.accel, **platform.facts()}


def _run_pytest(run_dir: Path, paths: list[Path], options: RunOptions) -> int:
    args = [
        *map(str, paths),
        f"--vp-run-dir={run_dir}",
        f"--junitxml={run_dir / 'pytest-junit.xml'}",
        f"--rootdir={SUITES_DIR}",
        "--import-mode=importlib",
        "-p",
        "virtproof.pytest_plugin",
        "-p",
        "virtproof.suite_session",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:locust",
        "-o",
        "addopts=",
        "-v",
        "--tb=short",
        "-rfEs",
    ]
    if options.workers > 1:
        args += ["-n", str(options.workers), "--dist", "loadgroup"]
    args += list(options.pytest_args)
    os.environ["VIRTPROOF_RUN_DIR"] = str(run_dir.resolve())
    sys.stdout.flush()
    return int(pytest.main(args))


def _finalize(run_dir: Path, loaded: LoadedScenario, options: RunOptions, say: Say) -> bool:
    from virtproof.reports.finalize import finalize_run

    result = finalize_run(run_dir, loaded.scenario.slo, options.baseline, options.max_regression)
    for gate in result.gate_results:
        say(f"gate {gate.line()}")
    return result.gates_passed
