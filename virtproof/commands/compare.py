"""``virtproof compare RUN_DIR... [--baseline RUN_DIR] [-o OUT]``: runs side by side."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from virtproof.core.errors import EXIT_OK, UsageError
from virtproof.reports.results import NotARunDirectory


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare runs side by side (HTML, Markdown, CSV)",
        description="Compare runs: per metric each run's p50/p95, the best, the ratio to the best and "
        "whether the gap is significant; feature parity, hosts and versions side by side.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="results/<run-id> directories")
    parser.add_argument(
        "--baseline", type=Path, metavar="RUN_DIR", help="test significance against this run instead of the best one"
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="OUT", help="output directory (default: ./comparison-<timestamp>/)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virtproof.reports.compare import render_comparison  # pandas and matplotlib: only when comparing

    paths = [*args.runs, *([args.baseline] if args.baseline else [])]
    for path in paths:
        if not path.is_dir():
            raise UsageError(f"{path}: not a run directory (no such directory)")
    out = args.output or Path(f"comparison-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    try:
        html = render_comparison(args.runs, out, baseline=args.baseline)
    except NotARunDirectory as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {html}, {html.with_suffix('.md')}, {html.with_suffix('.csv')}")
    return EXIT_OK
