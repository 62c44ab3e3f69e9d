"""Keep secrets (tokens, client keys, passwords from a kubeconfig) out of logs and results.

``Redactor`` knows the secret strings of one connection; ``redact(text)`` replaces each with
``<redacted>``. ``install()`` adds it as a logging filter to every handler of the root logger
and to the loggers the kubernetes client and urllib3 use, so a record is scrubbed however it
is emitted. The harness also passes exception texts through ``redact`` before showing them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "<redacted>"
_SECRET_KEYS = frozenset({
    "token", "password", "client-key-data", "id-token", "refresh-token", "client-secret",
    "access-token", "secret", "apiKey", "api-key",
})
_MIN_LEN = 6


class Redactor(logging.Filter):
    """Replaces known secret strings; also a logging.Filter that scrubs records in place."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        found = set(self._secrets)
        for secret in secrets:
            for variant in _variants(secret):
                if len(variant) >= _MIN_LEN:
                    found.add(variant)
        with self._lock:
            self._secrets = tuple(sorted(found, key=len, reverse=True))
        if getattr(self, "_installed", False):
            _PROCESS.add(self._secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redact(formatted)
            record.exc_info = None
        return True

    def install(self) -> None:
        """Share this redactor's secrets with the process-wide filter (installed once)."""
        self._installed = True
        _PROCESS.add(self._secrets)
        _PROCESS._attach()

    def uninstall(self) -> None:
        """Stop sharing new secrets; those already shared stay redacted (that is harmless)."""
        self._installed = False

    def _attach(self) -> None:
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
            for handler in logger.handlers:
                if self not in handler.filters:
                    handler.addFilter(self)


_LOGGERS = ("", "kubernetes", "urllib3", "virtproof.lab.kubevirt", "virtproof.lab.clusters")


def _variants(secret: str) -> list[str]:
    """The secret, its base64-decoded text (client-key-data), and each line of a PEM."""
    out = [secret.strip()]
    try:
        decoded = base64.b64decode(secret, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    for text in (secret, decoded):
        if "-----BEGIN" in text:
            out.append(text.strip())
            out.extend(line.strip() for line in text.splitlines()
                       if line.strip() and not line.startswith("-----"))
        elif text is decoded and decoded:
            out.append(decoded.strip())
    return out


def kubeconfig_secrets(config: Mapping[str, Any]) -> list[str]:
    """Every secret value in a parsed kubeconfig (users' tokens, keys, passwords, auth providers)."""
    found: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str) and key in _SECRET_KEYS and node:
            found.append(node)

    for user in config.get("users") or []:
        if isinstance(user, Mapping):
            walk(user.get("user") or {})
    return found


# One filter for the whole process: every connection's secrets, longest first, so a secret that
# contains another (a PEM and its lines) is replaced whole.
_PROCESS = Redactor()
