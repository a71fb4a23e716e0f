"""The values minted credentials produced (tokens, cookie values, CSRF tokens, rotated
fields), per service, each redacted until it expires (SPEC §5), with no count limit.

A ``Redactor`` compiles one regex over all its secrets, and compiling costs tens of ms per
secret and grows faster than linearly (100 tokens: seconds). Rebuilding one redactor for
every mint would let a hostile upstream that forces re-mints with 401s stall the proxy. So
the values live in **groups** of at most ``GROUP`` in mint order, each with its own redactor
built once: a new value rebuilds only the last, open group; a full group is never rebuilt
(unless the service's placeholder changes); a group is dropped once every value in it has
expired (plus ``EXPIRY_GRACE``). The service's redactor chains the static one (keystore
secrets, retired values) with one redactor per group (``RedactorChain``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mitmproxy import http

from vaultproxy.values.redact import Redactor

GROUP = 4  # a mint rebuilds at most this many (tens of ms each); a chain of N/GROUP parts
EXPIRY_GRACE = 300.0  # seconds a minted value stays redacted past its stated expiry


@dataclass(eq=False)
class _Group:
    values: dict[bytes, float | None] = field(default_factory=dict)  # value -> expires_at
    redactor: Redactor | None = None
    built_for: bytes = b""  # the placeholder its redactor replaces with

    def expired(self, now: float) -> bool:
        return all(u is not None and u + EXPIRY_GRACE < now for u in self.values.values())

    def __repr__(self) -> str:
        return f"<group of {len(self.values)}>"


class MintedValues:
    """Per service, its minted values in groups. Not thread-safe: the session locks."""

    def __init__(self) -> None:
        self._groups: dict[str, list[_Group]] = {}

    def __repr__(self) -> str:
        return f"<MintedValues {sum(len(g) for g in self._groups.values())} groups>"

    def clear(self) -> None:
        self._groups.clear()

    def add(self, service: str, values: Iterable[bytes], expires_at: float | None,
            now: float) -> bool:
        """Keep ``values`` until ``expires_at`` (None: until cleared). True if any is new."""
        groups = [g for g in self._groups.get(service, []) if not g.expired(now)]
        changed = False
        for value in values:
            if len(value) < 4:
                continue
            found = next((g for g in groups if value in g.values), None)
            if found is not None:
                old = found.values[value]
                if old is not None and (expires_at is None or expires_at > old):
                    found.values[value] = expires_at  # re-issued: the later expiry wins
                continue
            if not groups or len(groups[-1].values) >= GROUP:
                groups.append(_Group())
            groups[-1].values[value] = expires_at
            groups[-1].redactor = None
            changed = True
        self._groups[service] = groups
        return changed

    def items(self) -> Iterator[tuple[str, bytes, float | None]]:
        for service, groups in self._groups.items():
            for g in groups:
                for value, until in g.values.items():
                    yield service, value, until

    def redactors(self, service: str, placeholder: bytes) -> list[Redactor]:
        """One redactor per group, built only where the group changed."""
        out = []
        for g in self._groups.get(service, []):
            if g.redactor is None or g.built_for != placeholder:
                g.redactor = Redactor((v, placeholder) for v in g.values)
                g.built_for = placeholder
            out.append(g.redactor)
        return out


class RedactorChain(Redactor):
    """Several redactors applied one after another, as one (same methods, same guarantees):
    a service's static secrets plus its minted values in groups (values/minted_values.py), so a new
    token never recompiles the others. A placeholder written by one part contains no secret
    a later part could match; a stream stays live (each part holds back only its own
    undecided tail, and the output of each feeds the next)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: Iterable[Redactor]) -> None:
        self._parts = tuple(p for p in parts if p.max_len)
        self._re = None
        self._partial = None
        self._repl = ()
        self._needles = ()
        self._escapes = ()
        self.max_len = max((p.max_len for p in self._parts), default=0)

    def __repr__(self) -> str:
        return f"<RedactorChain {len(self._parts)} parts>"

    def may_match(self, data: bytes) -> bool:
        return any(p.may_match(data) for p in self._parts)

    def redact(self, data: bytes) -> bytes:
        for p in self._parts:
            data = p.redact(data)
        return data

    def hold_from(self, buf: bytes) -> int:
        return min((p.hold_from(buf) for p in self._parts), default=len(buf))

    def stream(self) -> Callable[[bytes], bytes]:
        feeds = [p.stream() for p in self._parts]

        def step(chunk: bytes) -> bytes:
            data = chunk
            for feed in feeds:
                if chunk:
                    data = feed(data) if data else b""
                else:  # the end: what the earlier parts flushed, then this one's flush
                    data = (feed(data) if data else b"") + feed(b"")
            return data

        return step

    def redact_headers(self, headers: http.Headers, joined: bytes | None = None) -> None:
        fields = headers.fields
        for p in self._parts:  # ``joined`` holds while no part has changed the fields
            p.redact_headers(headers, joined if headers.fields is fields else None)
