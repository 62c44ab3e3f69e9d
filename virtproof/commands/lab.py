"""``virtproof lab up|down|status|clean|plan SCENARIO``: manage a scenario's lab by hand.

``up`` leaves the lab running for later ``virtproof run``s of the same scenario (they attach
to it instead of creating their own); ``down`` removes it. ``clean`` removes what killed runs
left behind (their qemu processes, namespaces, links and files), and only that.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from virtproof.core.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, LabUnavailable, UsageError
from virtproof.lab.factory import (
    forget_persistent,
    leftovers_cleaners,
    open_lab,
    persistent_lab_id,
    remember_persistent,
)
from virtproof.reports.results import new_run_id
from virtproof.scenarios.model import LoadedScenario, ScenarioError, load_scenario
from virtproof.terminal import status_updater, stderr_console


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="bring a scenario's lab up or down, show it, clean leftovers, print its plan")
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("up", up, "bring the lab up and leave it running"),
        ("down", down, "tear down a lab brought up with `lab up`"),
        ("status", status, "show the scenario's lab, its nodes and VMs"),
        ("clean", clean, "remove what killed runs left behind (only that)"),
        ("plan", plan, "print every command and manifest the lab would run or apply, without running it"),
    ):
        a = lsub.add_parser(name, help=text)
        a.add_argument("scenario", type=Path, nargs="?" if name == "clean" else None, help="scenario YAML file")
        a.set_defaults(func=func)


def _load(path: Path) -> LoadedScenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None


def up(args: argparse.Namespace) -> int:
    loaded = _load(args.scenario)
    existing = persistent_lab_id(loaded.scenario)
    if existing:
        print(f"lab {existing} is already up for {loaded.scenario.name}")
        return EXIT_OK
    lab_id = f"{loaded.scenario.name}-{new_run_id()}"
    handle = open_lab(loaded.scenario, lab_id, persistent=True)
    console = stderr_console()
    try:
        with console.status("bringing the lab up") as st:
            platform = handle.up(status_updater(st))
    except RuntimeError as exc:
        raise LabUnavailable(str(exc)) from None
    except KeyboardInterrupt as exc:  # labs remove what they made when interrupted in up()
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"virtproof: interrupted by signal {signum} while bringing lab {lab_id} up", file=sys.stderr)
        return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
    platform.close()
    remember_persistent(loaded.scenario, lab_id)
    print("\n".join(handle.status()))
    return EXIT_OK


def down(args: argparse.Namespace) -> int:
    loaded = _load(args.scenario)
    lab_id = persistent_lab_id(loaded.scenario)
    if lab_id is None:
        print(f"no lab is up for {loaded.scenario.name}")
        return EXIT_OK
    removed = open_lab(loaded.scenario, lab_id).down()
    forget_persistent(loaded.scenario)
    print(f"lab {lab_id} down: removed {len(removed)} resource(s)")
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    loaded = _load(args.scenario)
    lab_id = persistent_lab_id(loaded.scenario)
    if lab_id is None:
        print(f"no lab is up for {loaded.scenario.name} (runs create and remove their own)")
        return EXIT_OK
    print("\n".join(open_lab(loaded.scenario, lab_id).status()))
    return EXIT_OK


def clean(args: argparse.Namespace) -> int:
    removed: list[str] = []
    if args.scenario is not None:
        loaded = _load(args.scenario)
        handle = open_lab(loaded.scenario, f"clean-{new_run_id()}")
        clean_scenario = getattr(handle, "clean_leftovers", None)
        if callable(clean_scenario):  # a cluster lab: labelled objects of dead runs in its cluster
            removed += clean_scenario()
    for cleaner in leftovers_cleaners():
        removed += cleaner()
    for line in removed:
        print(f"removed {line}")
    print(f"{len(removed)} leftover resource(s) removed")
    return EXIT_OK


def plan(args: argparse.Namespace) -> int:
    loaded = _load(args.scenario)
    for line in open_lab(loaded.scenario, f"plan-{new_run_id()}").plan():
        print(line)
    return EXIT_OK
