"""Writing to the terminal: text from outside (paths, names, exception messages, cluster and guest
replies) is always shown as it is, never read as rich markup (``[/tmp/x]`` is a path, not a tag)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.status import Status
from rich.text import Text


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, markup=False)


def sayer(console: Console) -> Callable[[str], None]:
    """``say(message)``: one line ``virtproof <message>``, the message taken literally."""

    def say(message: str) -> None:
        console.print(Text.assemble(("virtproof", "bold cyan"), " ", message))

    return say


def status_updater(status: Status) -> Callable[[str], None]:
    """Progress lines for a spinner, taken literally."""

    def update(message: str) -> None:
        status.update(Text(message))

    return update
