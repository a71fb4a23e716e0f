"""Honeytokens (SPEC §10): decoy credentials handed to agents like real placeholders; any use
of one is refused and reported. Pure: bytes in, the honeytoken's name (or None) out.

A decoy is found in every encoding the response redactor knows (values/redact.py: raw,
percent-encoded in either hex case, JSON-escaped, base64 and base64url at any alignment
inside a longer text) and, through ``placeholders.decoded_views``, after the decodings an
upstream would apply first (repeated percent-decoding, ``+`` as space, JSON escapes, a
``Basic`` credential's base64). So it is caught in a header, a query, a path, a body, a
``Basic``/``Proxy-Authorization`` credential, or wrapped in base64 by the agent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vaultproxy.values.placeholders import decoded_views
from vaultproxy.values.redact import Redactor

_MARK = b"\x00vaultproxy-honeytoken\x00"


class HoneytokenIndex:
    """Every honeytoken of one config, compiled once (``{name: value}``)."""

    __slots__ = ("_names", "_redactor")

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._names = {value.encode(): name for name, value in tokens.items()}
        pairs = [(value, _MARK + str(i).encode() + _MARK)
                 for i, value in enumerate(self._names)]
        self._redactor = Redactor(pairs) if pairs else None

    def __bool__(self) -> bool:
        return self._redactor is not None

    def find(self, data: bytes) -> str | None:
        """The name of a honeytoken found in ``data`` (any view, any encoding), or None."""
        r = self._redactor
        if r is None or not data:
            return None
        for view in decoded_views(data):
            if not r.may_match(view):
                continue
            marked = r.redact(view)
            if marked != view:
                i = int(marked.split(_MARK, 2)[1])
                return list(self._names.values())[i]
        return None

    def find_any(self, surfaces: Iterable[tuple[str, bytes]]) -> tuple[str, str] | None:
        """(honeytoken name, surface label) of the first hit among ``(label, data)`` pairs."""
        if self._redactor is None:
            return None
        for label, data in surfaces:
            name = self.find(data)
            if name is not None:
                return name, label
        return None
