"""Exceptions the CLI maps onto exit codes (see ``virtproof.cli``)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a scenario, a path, a flag. Exit code 2."""


class LabUnavailable(Exception):
    """The lab could not come up (or be attached to). Exit code 3."""


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LAB = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
