"""``virtproof validate SCENARIO...``: check scenario files without running anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virtproof.core.errors import EXIT_OK, EXIT_USAGE
from virtproof.scenarios.model import ScenarioError, load_scenario


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check scenario files; one line per error, exit 2 if any is invalid")
    p.add_argument("scenarios", type=Path, nargs="+", metavar="SCENARIO")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.scenarios:
        try:
            loaded = load_scenario(path)
        except ScenarioError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
            continue
        s = loaded.scenario
        print(f"ok: {path}: {s.name} (lab {s.lab.kind}; suites {', '.join(s.suites.enabled())}; {len(s.slo)} SLO(s))")
    return status
