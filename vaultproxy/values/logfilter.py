"""A redacting log filter: the second line of defence behind "never log a secret".

Every record that reaches a handler of the root logger is redacted with the secrets the
process holds unlocked (all services' forms, as in responses), whoever logged it: our code,
mitmproxy quoting a peer's bytes, uvicorn. ``ProxyState`` hands over a fresh redactor
whenever its secrets change (``use``); with none, records pass unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type only: importing redact pulls in mitmproxy (~1 s before a prompt)
    from vaultproxy.values.redact import Redactor

_redactor: Redactor | None = None


def use(redactor: Redactor | None) -> None:
    """Redact log records with ``redactor`` from now on (None: the keystore is locked)."""
    global _redactor
    _redactor = redactor


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        redactor = _redactor
        if redactor is None:
            return True
        message = record.getMessage()
        clean = redactor.redact(message.encode("utf-8", "surrogateescape"))
        if clean != message.encode("utf-8", "surrogateescape"):
            record.msg, record.args = clean.decode("utf-8", "replace"), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact(record.exc_text.encode()).decode("utf-8", "replace")
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
