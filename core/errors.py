"""The error hierarchy every command maps onto exit codes, and the exit codes themselves.

- ``UsageError`` (2): bad input from the user: a scenario, a path, a flag, a disk that is not one.
- ``LabUnavailable`` (3): the lab or this host cannot do the work (qemu, libguestfs, KVM/TCG, a
  cluster that is not reachable, an unsafe state directory: ``statedir.StateDirError``); a host
  problem is never reported as a verdict on a VM.
- ``RunFailed`` (1): the work ran and something it checked failed.

Anything else that escapes a command is a bug in virtproof, not bad input: it is never turned
into exit code 2.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LAB = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class VirtproofError(Exception):
    """Base of the errors a command reports in one line and maps to ``exit_code``."""

    exit_code = EXIT_FAILED


class UsageError(VirtproofError):
    """Bad input from the user: a scenario, a path, a flag. Exit code 2."""

    exit_code = EXIT_USAGE


class LabUnavailable(VirtproofError):
    """The lab could not come up (or be attached to), or the host lacks what the work needs. Exit code 3."""

    exit_code = EXIT_LAB


class RunFailed(VirtproofError):
    """The work ran and a check failed. Exit code 1."""

    exit_code = EXIT_FAILED
