"""The ``virtproof`` command. Each sub-command lives in its own ``virtproof.commands`` module.

Exit codes: 0 all passed, 1 a test or SLO failed, 2 bad input or usage, 3 the lab could not
come up, 130/143 interrupted by SIGINT/SIGTERM (after cleaning up).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from virtproof import __version__
from virtproof.core.errors import EXIT_USAGE, LabUnavailable, UsageError, VirtproofError

# Each module defines ``register(subparsers)``; the parser it adds sets ``func(args) -> int``.
COMMAND_MODULES = (
    "virtproof.commands.run",
    "virtproof.commands.validate",
    "virtproof.commands.lab",
    "virtproof.commands.images",
    "virtproof.commands.compare",
    "virtproof.commands.premigrate",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virtproof", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"virtproof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" goes to the command untouched (e.g. pytest arguments for `run`).
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if passthrough:
        if not hasattr(args, "pytest_args"):
            parser.error(f"'{args.command}' takes no arguments after --")
        args.pytest_args = passthrough
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"virtproof: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except LabUnavailable as exc:
        print(f"virtproof: lab unavailable: {exc}", file=sys.stderr)
        return exc.exit_code
    except VirtproofError as exc:
        print(f"virtproof: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
