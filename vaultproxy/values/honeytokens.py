"""Honeytokens (SPEC §10): decoy credentials handed to agents like real placeholders; any use
of one is refused and reported. Pure: bytes in, the honeytoken's name (or None) out.

A decoy is found in every encoding the response redactor knows (values/redact.py: raw,
percent-encoded in either hex case, JSON-escaped, base64 and base64url at any alignment
inside a longer text) and, through ``placeholders.decoded_views``, after the decodings an
upstream would apply first (repeated percent-decoding, ``+`` as space, JSON escapes, a
``Basic`` credential's base64). So it is caught in a header, a query, a path, a body, a
``Basic``/``Proxy-Authorization`` credential, or wrapped in base64 by the agent.

``refuse`` is the one way a sighting is reported, whatever the entry (a proxied request, the
``POST /proxy`` body, an MCP tool call's arguments): one ``honeytoken`` audit record, one
alert to ``notify_command``, then ``403 honeytoken``. ``screen`` = scan + ``refuse``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from vaultproxy.audit.canonical import Sink, record_honeytoken
from vaultproxy.errors import HoneytokenUsed
from vaultproxy.values.placeholders import decoded_views
from vaultproxy.values.redact import Redactor

_MARK = b"\x00vaultproxy-honeytoken\x00"


class HoneytokenIndex:
    """Every honeytoken of one config, compiled once (``{name: value}``)."""

    __slots__ = ("_names", "_redactor", "active")

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._names = {value.encode(): name for name, value in tokens.items()}
        pairs = [(value, _MARK + str(i).encode() + _MARK)
                 for i, value in enumerate(self._names)]
        self._redactor = Redactor(pairs) if pairs else None
        # ``bool(self)`` as an attribute (no call): asked on every request
        self.active: bool = self._redactor is not None

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


@dataclass(frozen=True)
class Sighting:
    """Where a decoy was used: what the audit record and the alert say (never a value)."""

    agent: str | None
    service: str | None
    method: str | None
    host: str | None  # None where the name itself carries the decoy
    path: str | None
    via: str  # "proxy", "api", "mcp"
    entry: str  # for the alert: "toward HOST", "through POST /proxy toward HOST", ...


def refuse(audit: Sink, alert: Callable[[str], None], name: str, surface: str,
           seen: Sighting) -> NoReturn:
    """Report the use of honeytoken ``name`` (audit record + alert) and refuse the request."""
    record_honeytoken(audit, name=name, agent=seen.agent, service=seen.service,
                      method=seen.method, host=seen.host, path=seen.path, surface=surface,
                      via=seen.via)
    who = seen.agent or "an unidentified client"
    alert(f"vaultproxy HONEYTOKEN {name} used by {who} {seen.entry} (in the {surface}); "
          "the request was refused")
    raise HoneytokenUsed(f"honeytoken {name} was used; the request was refused and reported")


def screen(index: HoneytokenIndex, surfaces: Iterable[tuple[str, bytes]], audit: Sink,
           alert: Callable[[str], None], seen: Callable[[], Sighting]) -> None:
    """Scan ``(label, data)`` surfaces; a hit is ``refuse``d (``seen`` is asked only then)."""
    hit = index.find_any(surfaces) if index else None
    if hit is not None:
        refuse(audit, alert, hit[0], hit[1], seen())
