"""The only reasons a test of virtproof may skip. Any other skip fails the test session.

A test that passes by skipping proves nothing, so skipping is refused unless the machine truly
cannot run the test. Each entry is a reason prefix and why it is acceptable; a skip message
must start with one of them (``tests/conftest.py`` checks every skip at the end of the session).
CI runs as root, so in CI nothing at all may skip. ``xfail`` is not a way around this: an
expected failure or an unexpected pass fails the session too.
"""

from __future__ import annotations

ALLOWED_SKIP_REASONS: dict[str, str] = {
    "not root:": "network namespaces, bridges, taps and the premigrate chroot need root; CI runs as root",
}


def allowed(reason: str) -> bool:
    text = reason.removeprefix("Skipped: ").strip()
    return any(text.startswith(prefix) for prefix in ALLOWED_SKIP_REASONS)
