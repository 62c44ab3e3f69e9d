"""``virtproof run SCENARIO``: bring the lab up, run the suites, check the gates, write the reports."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from virtproof.core.errors import EXIT_SIGINT, EXIT_SIGTERM, UsageError
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import LoadedScenario, ScenarioError, load_scenario
from virtproof.terminal import sayer, stderr_console

if TYPE_CHECKING:
    from virtproof.run import RunOptions


def _percent(text: str) -> float:
    value = text.strip().removesuffix("%")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 10%") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return number / 100


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a scenario: lab up, suites, gates, reports, lab down")
    p.add_argument("scenario", type=Path, help="scenario YAML file")
    p.add_argument("--suite", action="append", default=[], metavar="NAME", help="run only this suite (repeatable)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: ./results)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="pytest-xdist workers (default: 1)")
    p.add_argument("--baseline", type=Path, help="a previous run directory to gate regressions against")
    p.add_argument("--max-regression", type=_percent, metavar="PCT", help="allowed regression, e.g. 10%%")
    p.set_defaults(func=main, pytest_args=[])
    p.epilog = "Arguments after -- go to pytest, e.g. virtproof run S.yaml -- -k vm0 -s"


def main(args: argparse.Namespace) -> int:
    from virtproof.run import RunOptions, execute  # pytest and the lab: only when running

    say = sayer(stderr_console())
    try:
        loaded = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    if args.baseline is not None and not (args.baseline / "manifest.json").exists():
        raise UsageError(f"--baseline {args.baseline}: not a run directory (no manifest.json)")
    options = RunOptions(
        suites=tuple(args.suite),
        results=args.results,
        workers=args.workers,
        baseline=args.baseline,
        max_regression=args.max_regression,
        pytest_args=tuple(args.pytest_args),
    )

    if loaded.scenario.labs:
        return _bake_off(loaded, options, say)
    outcome = execute(loaded, options, say)
    say(f"run {outcome.status} (exit {outcome.exit_code})")
    print(outcome.run_dir, flush=True)
    return outcome.exit_code


def _bake_off(loaded: LoadedScenario, options: RunOptions, say: Callable[[str], None]) -> int:
    """The scenario on each of its ``labs``, then one comparison of the runs."""
    from virtproof.reports.compare import render_comparison
    from virtproof.run import execute, for_lab

    outcomes = []
    for index, lab in enumerate(loaded.scenario.labs):
        say(f"lab {index + 1}/{len(loaded.scenario.labs)}: {lab.kind}")
        outcome = execute(for_lab(loaded, index), options, say)
        say(f"run {outcome.status} (exit {outcome.exit_code}): {outcome.run_dir}")
        outcomes.append(outcome)
        if outcome.exit_code in (EXIT_SIGINT, EXIT_SIGTERM):
            break  # interrupted: compare what ran, do not start the next lab
    out = options.results / f"comparison-{new_run_id()}"
    html = render_comparison([o.run_dir for o in outcomes], out, options.baseline)
    say(f"comparison of {len(outcomes)} run(s): {html}")
    print(out, flush=True)
    codes = [o.exit_code for o in outcomes]
    interrupted = [c for c in codes if c in (EXIT_SIGINT, EXIT_SIGTERM)]
    return interrupted[0] if interrupted else max(codes)
