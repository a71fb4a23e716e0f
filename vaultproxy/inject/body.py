"""Placeholder substitution in a buffered request body (``substitute_in`` has ``body``)."""

from __future__ import annotations

from vaultproxy.values.placeholders import Context, substitute

_FORM = "application/x-www-form-urlencoded"


def body_context(content_type: str) -> Context:
    """JSON (``application/json``, ``*+json``), form, or raw for anything else."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if mime == _FORM:
        return "form"
    return "raw"


def substitute_body(body: bytes, content_type: str, placeholder: bytes, secret: bytes) -> bytes:
    """Replace ``placeholder`` in ``body`` with ``secret`` escaped for the body's media type.

    JSON: JSON-string escaping (the placeholder is expected inside a string literal).
    Form: ``quote_plus``. Anything else (multipart, text, ...): the raw bytes.
    The caller updates ``Content-Length``.
    """
    return substitute(body, placeholder, secret, body_context(content_type))
