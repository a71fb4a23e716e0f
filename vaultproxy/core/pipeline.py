"""The request pipeline every entry shares: the checks a request to an intercepted service
must pass, whether it needs a minted token, the injection (and the body wait), and the
``forward`` audit record before a credential leaves.

Each entry is a thin adapter that builds (or holds) a mitmproxy ``http.Request`` and calls
these in order, acting on the ``Decision``'s ``Plan`` and never re-deriving it:

1. ``check_request``: the target (origin-form, the routed host), the header section, and the
   plan's ``drop`` set (Range, routing overrides);
2. ``needs_token``: fetch a minted token first?
3. ``inject_head``, then ``inject_body`` once the body is whole when ``wait_body``;
4. ``record_forward`` whenever a credential went in, before the request leaves.

The mitmproxy stages (stages/) and ``POST /proxy`` (admin/proxy_route.py) are two such
adapters today; a second copy of any of these steps is how ``/proxy`` once forwarded
``Range`` and ``X-Forwarded-Host``.

Request rules and approvals plug in beside ``check_request``: they read the same request.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from mitmproxy import http

from vaultproxy.audit.canonical import AheadSink, ahead_record
from vaultproxy.config.models import Service
from vaultproxy.core.decide import Plan
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import AuditUnavailable, BodyTooLarge, HostMismatch, InvalidRequest
from vaultproxy.inject import names as _names
from vaultproxy.inject import prepare_request, substitute_request_body
from vaultproxy.inject.minted import credential
from vaultproxy.inject.names import canonical_names, names_with
from vaultproxy.inject.names import header_names as header_names  # (the stages' import)
from vaultproxy.inject.request import canonical_name, made_for, minted_trigger
from vaultproxy.inject.sigv4 import sign_at_head, sign_request
from vaultproxy.keystore import Entry
from vaultproxy.keystore.entries import SharedEntry
from vaultproxy.mint.cache import Issued
from vaultproxy.net.decoding import _limited, limit_accept_encoding
from vaultproxy.net.hostnames import normal_host, same_target
from vaultproxy.values.placeholders import PlaceholderIndex

MAX_HEADER_FIELDS = 256
MAX_HEADER_BYTES = 64 * 1024

# The one hop-by-hop set (RFC 9110 §7.6.1, plus the framing an entry re-computes): never
# copied from one connection to the next, in either direction.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
    b"trailer", b"upgrade", b"content-length",
})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_TOKENS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?::[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*\Z")


def host_header(req: http.Request) -> str | None:
    """``req.host_header``: an HTTP/1 request's ``Host`` values joined by ", " (None: none),
    read through ``header_names``; HTTP/2 and 3 (the authority first) take mitmproxy's."""
    data = req.data
    if data.http_version in (b"HTTP/2.0", b"HTTP/3"):
        return req.host_header
    return header_value(data.headers.fields, b"host")


def header_value(fields: tuple[tuple[bytes, bytes], ...], name: bytes) -> str | None:
    """``Headers.get(name)`` (``name`` lower-case bytes) through ``header_names``: the values
    joined by ", ", None when there is none."""
    names = header_names(fields)
    count = names.count(name)
    if count == 1:  # (the common one: no comprehension, no join of one)
        return fields[names.index(name)][1].decode("utf-8", "surrogateescape")
    if not count:
        return None
    return ", ".join([fields[i][1].decode("utf-8", "surrogateescape")
                      for i, n in enumerate(names) if n == name])


def hop_free(fields: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]
             ) -> list[tuple[bytes, bytes]]:
    """``fields`` without the hop-by-hop ones."""
    return [(k, v) for k, v in fields if k.lower() not in HOP_BY_HOP]


def check_headers(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[bytes, ...]:
    """Raise InvalidRequest for a header section an upstream might read differently; return
    ``header_names(fields)`` (the caller's next look at them, without a call).

    Names are RFC 9110 tokens; values hold no CR, LF or NUL (mitmproxy keeps an obs-fold
    continuation as ``"\\r\\n "`` inside the value, which an upstream could read as a new
    header line); at most ``MAX_HEADER_FIELDS`` fields and ``MAX_HEADER_BYTES`` bytes.
    """
    global _names_ok
    checked = _names._checked_memo
    if checked[0] is fields:  # a head the agent's names' pattern read (seam/lean.py
        return checked[1]  # ``_Known``): every check below passes, the names are these
    if len(fields) > MAX_HEADER_FIELDS:
        raise InvalidRequest(f"more than {MAX_HEADER_FIELDS} header fields")
    # All names and all values at once (one match and one search per request); the
    # field-by-field loop below only runs to name the field that fails. The names are read
    # through ``header_names`` (lower-casing changes only A-Z, token characters both ways:
    # the same verdict, the same length), and a names tuple equal to the last one found to
    # be tokens is that verdict again (an agent sends the same names request after request;
    # the values, which change, are searched every time).
    names = header_names(fields)
    memo = _names_ok
    if names == memo[0]:
        size = memo[1]
    else:
        joined = b":".join(names)  # ":" is no token character: a name holding one adds
        if _TOKENS.match(joined) and joined.count(b":") == len(fields) - 1:  # to the count
            size = len(joined) - len(fields) + 1
            _names_ok = (names, size)
        else:
            size = -1
    if size >= 0:
        values = b"".join([value for _, value in fields])
        # ``_BAD_VALUE.search(values)`` as three memchr (``int in bytes``): a regular
        # expression call costs ~2k instructions more (tests/unit/test_speed_stages4.py)
        if 13 not in values and 10 not in values and 0 not in values:
            if size + len(values) > MAX_HEADER_BYTES:
                raise InvalidRequest(f"the header section is over {MAX_HEADER_BYTES // 1024} KiB")
            return names
    size = 0
    for i, (name, value) in enumerate(fields):
        size += len(name) + len(value)
        if not _TOKEN.match(name):
            raise InvalidRequest(f"header field {i + 1}: the name is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise InvalidRequest(
                f"header field {i + 1}: the value holds a line break (obs-fold) or NUL"
            )
    if size > MAX_HEADER_BYTES:
        raise InvalidRequest(f"the header section is over {MAX_HEADER_BYTES // 1024} KiB")
    return names


#: ``check_headers``' last header names (``header_names``) that were all tokens, and the
#: sum of their lengths.
_names_ok: tuple[tuple[bytes, ...], int] = ((), 0)


def check_target(
    req: http.Request, host: str, port: int, dialed: tuple[str, int] | None
) -> None:
    """The request must name exactly the routed target, in origin-form.

    mitmproxy fills ``host``/``port`` of an origin-form request with the address it dials
    (``dialed``), and takes them from the URI of an absolute-form one (clearing the
    authority, so HTTP/1 leaves in origin-form). So: ``https``, and either the dialed
    address or the target itself; an HTTP/2 ``:authority`` must name the target. An upstream
    routes on the URI's host: any other authority would carry the credential elsewhere.
    """
    data = req.data
    if (
        data.scheme != b"https"
        # the dialed address first: it is what mitmproxy filled in (no ``normal_host``;
        # ``(data.host, data.port) != dialed`` without the pair, ``dialed`` being one)
        or ((dialed is None or data.host != dialed[0] or data.port != dialed[1])
            and (normal_host(data.host), data.port) != (host, port))
        # ``req.authority`` decodes with the (pure Python) idna codec: only when there is one
        or (data.authority and not same_target(req.authority, host, port))
    ):
        raise HostMismatch("the request target names another host than the tunnel target")
    if data.http_version.startswith(b"HTTP/1"):
        data.authority = b""  # origin-form upstream (``req.authority = ""``, no codec)
    path = data.path
    if path == b"*" and req.method == "OPTIONS":
        return
    if not path.startswith(b"/") or path.startswith(b"//"):
        raise InvalidRequest("the request target must be an origin-form path (/...)")


def check_request(
    req: http.Request, plan: Plan, target: tuple[str, int],
    dialed: tuple[str, int] | None = None,
) -> None:
    """Every check a request to an intercepted service passes before a credential: the
    target, the header section, then the plan's ``drop`` set is removed."""
    check_target(req, target[0], target[1], dialed)
    headers = req.data.headers  # (``req.headers``)
    fields = headers.fields
    # ``check_headers(fields)`` and ``canonical_names(fields, names)``, their memos' tests
    # inline (every request: a head the agent's names' pattern read, then its names)
    checked = _names._checked_memo
    names = checked[1] if checked[0] is fields else check_headers(fields)
    memo = _names._canonical_memo
    canonical = memo[1] if memo[0] is fields else canonical_names(fields, names)
    drop = plan.drop
    # any ``canonical_name(k) in drop``, through the section's one view of its names
    if not drop.isdisjoint(canonical):
        headers.fields = tuple((k, v) for k, v in fields if canonical_name(k) not in drop)


def needs_token(plan: Plan, req: http.Request, index: PlaceholderIndex) -> bool:
    """Does this request carry a minted credential (fetch the token first)? Always in
    host_inject; in placeholder mode only when the trigger header carries the placeholder."""
    service = plan.service
    if not plan.mint:
        return False
    if service.mode == "host_inject":
        return True
    return minted_trigger(list(req.headers.fields), service, index.placeholder_of(service.name))


class Injected(NamedTuple):
    """What ``inject_head`` did: the entry used, whether the head carries a credential, and
    whether the body must arrive whole for ``inject_body``. (Immutable; a NamedTuple costs
    less per request than a frozen dataclass.)"""

    entry: Entry
    injected: bool
    wait_body: bool


#: An Accept-Encoding value (raw bytes) ``inject_head`` found to be its own limit
#: (``net.decoding._limited``): ``limit_accept_encoding`` leaves it as it is.
_kept_offer: bytes = b"\x00"  # (no field value holds a NUL: ``check_headers``)


def inject_head(
    st: ProxyState, req: http.Request, plan: Plan, minted: Issued | None
) -> Injected:
    """Strip what the caller sent and add the credential to the head (in place)."""
    global _kept_offer
    service = plan.service
    entry = st.session.entry_for(service)
    data = req.data
    headers = data.headers  # (``req.headers``)
    made = None
    if minted is None and type(entry) is SharedEntry and service.mode == "host_inject":
        made = entry.made  # ``made_for(entry, service)``, its memo's test inline
        if made is None or made.service is not service:
            made = made_for(entry, service)
    sent = headers.fields
    memo = _names._canonical_memo  # (``canonical_names(sent)``, its memo's test inline)
    if made is not None and type(sent) is tuple and made.strip.isdisjoint(
            memo[1] if memo[0] is sent else canonical_names(sent)):
        # ``prepare_request`` of a host_inject request with no field to strip, for an auth
        # type that adds one field made of the entry alone (``made_for``): the same scan,
        # then ``sent`` plus that field, whose names the memo learns as ``header_names``
        # would compute them (tests/unit/test_speed_inject7.py compares the two)
        # (``scan_all(_pieces(sent, *partition of the path))``: the filter's text without
        # the pieces, which it builds, in that order, only when the filter trips)
        st.snapshot.index.scan_head(sent, data.path, service.name)
        more = sent + (made.field,)
        headers.fields = more
        names = names_with(sent, more, made.lname)
        injected = True
        # ``header_value(more, b"accept-encoding")`` through the names just learnt (one
        # field, the common one: by its index; else ``header_value`` itself)
        count = -1 if names is None else names.count(b"accept-encoding")
        if count == 1 and names is not None:
            raw = more[names.index(b"accept-encoding")][1]
            # a value found to be its own limit before (``_kept_offer``) is that again:
            # no decoding, no look-up (``limit_accept_encoding`` is a function of the value)
            offered: str | None = (None if raw == _kept_offer
                                   else raw.decode("utf-8", "surrogateescape"))
            if offered is not None and _limited.get(offered) == offered:
                _kept_offer = raw
                offered = None
        else:
            offered = None if count == 0 else header_value(more, b"accept-encoding")
    else:
        made = None
        secret, fields = entry.value, entry.fields
        if minted is not None:
            secret, fields = credential(minted, service.auth)
        injected = prepare_request(req, service, secret, fields, st.snapshot.index).injected
        offered = header_value(headers.fields, b"accept-encoding")
    # ``limit_accept_encoding(headers, offered)``, called only when it may change the field:
    # a value its memo holds as its own limit is left as it is (the function's own test)
    if offered is not None and _limited.get(offered) != offered:
        limit_accept_encoding(headers, offered)
    if plan.body == "sign":  # signed over the final head (and maybe the body)
        wait = not sign_at_head(req, service, entry.fields)
        injected = injected or not wait
    else:
        wait = plan.body == "substitute"
    if wait:
        length = req.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > plan.max_body:
            raise BodyTooLarge()
    elif made is not None:  # (one answer per entry and service: immutable)
        done = made.done
        if done is None:
            done = made.done = Injected(entry, True, False)
        return done  # type: ignore[no-any-return]
    return Injected(entry, injected, wait)


def inject_body(st: ProxyState, req: http.Request, plan: Plan, entry: Entry) -> bool:
    """The whole body is here: sign it, or substitute the placeholder. True if a credential
    went in."""
    body = req.raw_content or b""
    if len(body) > plan.max_body:
        raise BodyTooLarge()
    if plan.body == "sign":
        sign_request(req, plan.service, entry.fields, body)
        return True
    return substitute_request_body(req, plan.service, entry, st.snapshot.index)


def record_forward(
    audit: AheadSink, on_failure: str, agent: str | None, service: Service | None,
    method: str, host: str | None, path: str | None, via: str | None = None,
) -> None:
    """The ``forward`` audit record of a request about to leave with a credential; raise
    AuditUnavailable when it cannot be written and ``[audit] on_failure`` is not
    ``continue``. (By position from stages/ahead.py: once per injected request.)"""
    if service is None:
        ok = ahead_record(audit, agent, None, None, method, host, path, via)
    else:
        ok = ahead_record(audit, agent, service.name, service.mode, method, host, path, via)
    if not ok and on_failure != "continue":
        raise AuditUnavailable()
