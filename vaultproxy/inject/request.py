"""``prepare_request``: strip what the agent sent, then inject or substitute (SPEC §5).

Order, and why:

1. **Scan** every header (names and values), the path and the query with
   ``PlaceholderIndex.scan``. A misdirected or unknown placeholder raises here, before
   anything changes. The body is not scanned here (it may not have arrived yet); callers that
   buffer it use ``PlaceholderIndex.scan`` and :func:`~vaultproxy.inject.body.substitute_body`.
2. **Build** the new header list and request target on a :class:`Draft`. Secret material is
   fetched only when it will be used, so a placeholder-mode request without the placeholder
   never needs the keystore entry.
3. **Commit** the draft to the request in one step. Any raise in 1-2 leaves it untouched.

Stripping: every value of a ``STRIP_HEADERS`` header (and of the service's ``header_name``) is
removed, except, in placeholder mode, values carrying this service's placeholder in a header
where it may be substituted (those are substituted). Header names are compared in every
spelling an upstream could read as the same field: any case, and ``_`` for ``-`` (CGI-style
servers map both to ``HTTP_X_API_KEY``). ``Proxy-Authorization`` is always removed: it is
addressed to a proxy, never to the upstream. For ``auth = "query_param"`` the agent's own
``param_name`` parameters are treated the same way (kept only if they carry the placeholder).

Where a placeholder may be substituted (``substitute_in``): ``auth`` (the default) is the one
slot the service's auth type uses: ``Authorization`` for bearer/basic, ``header_name`` for
header, the ``param_name`` parameter for query_param. ``header`` (any header), ``query`` (any
parameter), ``path`` and ``body`` are opt-ins. A placeholder anywhere else is left as it is:
it is not a secret, and the upstream simply sees the placeholder text.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.inject.basic import Basic
from vaultproxy.inject.bearer import Bearer
from vaultproxy.inject.body import substitute_body
from vaultproxy.inject.header import Header
from vaultproxy.inject.minted import MintedCredential, is_minted, trigger_header
from vaultproxy.inject.names import canonical_names
from vaultproxy.inject.path_prefix import PathPrefix
from vaultproxy.inject.query import drop_params, map_param_values
from vaultproxy.inject.query_param import QueryParam
from vaultproxy.inject.sigv4 import SigV4
from vaultproxy.inject.strategy import Draft, HeaderFields, Strategy, header_safe
from vaultproxy.keystore import Entry
from vaultproxy.keystore.entries import SharedEntry
from vaultproxy.secret import Secret
from vaultproxy.values.placeholders import (
    PlaceholderIndex,
    basic_credentials,
    holds,
    substitute,
)

STRIP_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "x-plex-token", "cookie")
_ALWAYS_STRIP = frozenset({b"proxy-authorization"})

STRATEGIES: Mapping[str, Strategy] = {
    s.auth: s for s in (Bearer(), Header(), Basic(), QueryParam(), PathPrefix(), SigV4())
}


class InjectResult(NamedTuple):
    """What ``prepare_request`` did. Names only, never values. (A NamedTuple: immutable
    like the frozen dataclass it was, at a fraction of its construction cost per request.)"""

    injected: bool
    surfaces: tuple[str, ...] = ()  # where a placeholder was substituted
    stripped: tuple[str, ...] = ()  # lower-case header names (and "query:<param>") removed


_MINTED = MintedCredential()
_INJECTED = InjectResult(True)  # host_inject with nothing stripped (an immutable NamedTuple)


def strategy_for(service: Service) -> Strategy:
    found = STRATEGIES.get(service.auth)
    if found is None and is_minted(service):
        return _MINTED
    if found is None:
        raise KeyError(service.auth)
    return found


def placeholder_secret(
    service: Service, value: Secret | None, fields: Mapping[str, Secret]
) -> bytes:
    """What this service's placeholder is replaced with (e.g. for ``substitute_body``)."""
    return strategy_for(service).placeholder_secret(service, value, fields)


_BASE_STRIP = frozenset(n.encode("ascii") for n in STRIP_HEADERS)


def canonical_name(name: bytes) -> bytes:
    """A header name as an upstream may read it: case-folded, ``_`` read as ``-``."""
    return name.lower().replace(b"_", b"-")


def auth_slot(service: Service) -> bytes | None:
    """The (canonical) header the service's auth type puts the credential in, if a header."""
    if service.auth in ("bearer", "basic"):
        return b"authorization"
    if service.auth == "header" and service.header_name:
        return canonical_name(service.header_name.encode("ascii"))
    if is_minted(service):
        return trigger_header(service)
    return None


def minted_trigger(headers: HeaderFields, service: Service, placeholder: bytes) -> bool:
    """Placeholder mode of a minted type: does the agent's trigger header carry the
    placeholder (inject/minted.py)? Then the request is injected as host_inject would be."""
    slot = trigger_header(service)
    return any(canonical_name(k) == slot and placeholder in v for k, v in headers)


_strip_cache: dict[str, frozenset[bytes]] = {}


def strip_names(service: Service) -> frozenset[bytes]:
    if not service.header_name:
        return _BASE_STRIP
    names = _strip_cache.get(service.header_name)
    if names is None:
        if len(_strip_cache) > 1024:  # header names come from services.toml: few, bounded
            _strip_cache.clear()
        names = _BASE_STRIP | {canonical_name(service.header_name.encode("ascii"))}
        _strip_cache[service.header_name] = names
    return names


class Made:
    """What ``made_for`` made of a shared keystore entry for one service in host_inject:
    the one header field the service's auth type adds (its value is the credential,
    revealed), the field's name lower-cased, the names its strip removes, and the
    ``inject_head`` answer of a request that waits for no body. Held only on the
    ``SharedEntry`` (``made``), which the keystore drops on every change (SECURITY 68).
    ``repr`` names nothing."""

    __slots__ = ("done", "field", "lname", "service", "strip")

    def __init__(self, service: Service, field: tuple[bytes, bytes], strip: frozenset[bytes]
                 ) -> None:
        self.service = service
        self.field = field
        self.lname = field[0].lower()
        self.strip = strip
        self.done: Any = None  # (``inject_head``'s own answer: core/pipeline.py)

    def __repr__(self) -> str:
        return "Made(***)"


#: The auth types whose host_inject injection is one header field made of the entry and the
#: service alone (nothing of the request, no clock): the same field for every request.
_ONE_FIELD = (Bearer, Header, Basic)


def made_for(entry: SharedEntry, service: Service) -> Made | None:
    """The service's host_inject header field made of ``entry`` (kept on it, made once per
    entry and service), or None when its auth type makes no such field or making it raises:
    the caller then runs ``prepare_request``, which raises what it raises, in its order."""
    made = entry.made
    if made is not None and made.service is service:
        return made  # type: ignore[no-any-return]
    strategy = STRATEGIES.get(service.auth)
    if strategy is None or type(strategy) not in _ONE_FIELD or service.mode != "host_inject":
        return None
    draft = Draft([], b"", None)
    try:
        strategy.inject(draft, service, entry.value, entry.fields)
    except Exception:  # noqa: BLE001  (prepare_request raises it again, in its order)
        return None
    if len(draft.headers) != 1 or draft.path or draft.query is not None or draft.stripped:
        return None
    made = Made(service, draft.headers[0], strip_names(service))
    entry.keep_made(made)
    return made  # type: ignore[no-any-return]


def prepare_request(
    request: http.Request,
    service: Service,
    value: Secret | None,
    fields: Mapping[str, Secret],
    index: PlaceholderIndex,
) -> InjectResult:
    """Strip, then inject (host_inject) or substitute (placeholder) on ``request`` in place."""
    data = request.data  # (``request.headers`` is ``data.headers``)
    sent = data.headers.fields
    headers = list(sent)
    path, sep, query = data.path.partition(b"?")
    index.scan_all(_pieces(sent, path, query), service.name)

    draft = Draft(headers, path, query if sep else None)
    names = canonical_names(sent)  # of ``draft.headers``, which nothing changed yet
    if service.mode == "host_inject" or (
        is_minted(service)
        and minted_trigger(headers, service, index.placeholder_of(service.name))
    ):
        result = _host_inject(draft, service, value, fields, names)
    else:
        result = _placeholder(draft, service, value, fields, index, names)

    data.headers.fields = tuple(draft.headers)
    after = draft.query  # ``draft.target()``, inline
    data.path = draft.path if after is None else draft.path + b"?" + after
    return result


def _pieces(fields: HeaderFields | tuple[tuple[bytes, bytes], ...], path: bytes, query: bytes
            ) -> Sequence[bytes]:
    """Every name and value of ``fields`` in order, then ``path`` and ``query``: what
    ``scan_all`` reads of a request. A few fields (tuples: every request's) by one tuple
    ``sum`` (C, no per-item bytecode; quadratic, so only a few)."""
    if type(fields) is tuple and len(fields) <= _FEW_FIELDS:
        try:
            return sum(fields, ()) + (path, query)
        except TypeError:  # a field that is not a tuple (a list): as below
            pass
    pieces = [x for field in fields for x in field]
    pieces.append(path)
    pieces.append(query)
    return pieces


_FEW_FIELDS = 24


def _strip(
    draft: Draft,
    service: Service,
    keep_value: bytes | None,
    keep_in: frozenset[bytes] | None = None,
    canonical: tuple[bytes, ...] | None = None,
) -> None:
    """Remove strip-list headers; keep values containing ``keep_value`` (if given) in the
    headers ``keep_in`` names (canonical; None: in any header). ``canonical``: the
    ``canonical_name`` of each of ``draft.headers``, in order, when the caller has them."""
    names = strip_names(service) if service.header_name else _BASE_STRIP  # (no call)
    if canonical is not None and names.isdisjoint(canonical):
        # no field to strip (the common request): ``draft.headers`` stays as it is
        draft.absent = names
        return
    kept: list[tuple[bytes, bytes]] = []
    for k, v in draft.headers:
        lk = k.lower().replace(b"_", b"-")  # canonical_name, inline: every header, every request
        if lk in names and not (
            keep_value is not None
            and lk not in _ALWAYS_STRIP
            and (keep_in is None or lk in keep_in)
            and _carries(v, keep_value)
        ):
            draft.stripped.append(lk.decode("ascii", "replace"))
            continue
        kept.append((k, v))
    draft.headers = kept
    if keep_value is None:
        draft.absent = names  # every field the list names went


def _carries(value: bytes, placeholder: bytes) -> bool:
    if holds(value, placeholder):
        return True
    creds = basic_credentials(value)
    return creds is not None and holds(creds, placeholder)


def _host_inject(
    draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret],
    canonical: tuple[bytes, ...] | None = None,
) -> InjectResult:
    _strip(draft, service, None, None, canonical)
    # ``strategy_for(service)``, its look-up first (a minted type, or none: the call)
    (STRATEGIES.get(service.auth) or strategy_for(service)).inject(draft, service, value, fields)
    stripped = draft.stripped
    # (nothing stripped, the common request: one immutable result, not one made per call)
    return InjectResult(True, (), tuple(dict.fromkeys(stripped))) if stripped else _INJECTED


def _placeholder(
    draft: Draft,
    service: Service,
    value: Secret | None,
    fields: Mapping[str, Secret],
    index: PlaceholderIndex,
    canonical: tuple[bytes, ...] | None = None,
) -> InjectResult:
    ph = index.placeholder_of(service.name)
    allowed = set(service.substitute_in)
    slot = auth_slot(service) if "auth" in allowed else None
    # Headers the placeholder may be substituted in: any (opt-in), the auth slot, or none.
    sub_in: frozenset[bytes] | None = (
        None if "header" in allowed else frozenset({slot}) if slot else frozenset()
    )
    _strip(draft, service, keep_value=ph if sub_in != frozenset() else None, keep_in=sub_in,
           canonical=canonical)
    param_slot = "auth" in allowed and service.auth == "query_param" and service.param_name
    if service.auth == "query_param" and service.param_name and draft.query:
        keep_query = "query" in allowed or bool(param_slot)
        before = draft.query
        draft.query = drop_params(before, service.param_name, keep=lambda p: keep_query and ph in p)
        if draft.query != before:
            draft.stripped.append(f"query:{service.param_name}")

    surfaces: list[str] = []
    secret: bytes | None = None

    def get_secret() -> bytes:
        nonlocal secret
        if secret is None:
            secret = placeholder_secret(service, value, fields)
        return secret

    def may_sub(name: bytes) -> bool:
        return sub_in is None or canonical_name(name) in sub_in

    if sub_in != frozenset() and any(may_sub(k) and _carries(v, ph) for k, v in draft.headers):
        draft.headers = [
            (k, _sub_header(v, ph, get_secret(), service) if may_sub(k) else v)
            for k, v in draft.headers
        ]
        surfaces.append("header" if sub_in is None else "auth")
    if draft.query is not None and holds(draft.query, ph):
        if "query" in allowed:
            draft.query = substitute(draft.query, ph, get_secret(), "percent")
            surfaces.append("query")
        elif param_slot:
            before = draft.query
            draft.query = map_param_values(
                before, str(service.param_name),
                lambda v: substitute(v, ph, get_secret(), "percent"),
            )
            if draft.query != before:
                surfaces.append("auth")
    if "path" in allowed and holds(draft.path, ph):
        draft.path = substitute(draft.path, ph, get_secret(), "percent")
        surfaces.append("path")
    return InjectResult(
        injected=bool(surfaces), surfaces=tuple(surfaces), stripped=_dedup(draft.stripped)
    )


def _sub_header(value: bytes, ph: bytes, secret: bytes, service: Service) -> bytes:
    creds = basic_credentials(value)
    if creds is not None and holds(creds, ph):
        scheme = value.strip().split(None, 1)[0]
        return scheme + b" " + base64.b64encode(creds.replace(ph, secret))
    if holds(value, ph):
        return substitute(value, ph, header_safe(service, secret), "raw")
    return value


def _dedup(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items)) if items else ()


def substitute_request_body(
    req: http.Request, service: Service, entry: Entry, index: PlaceholderIndex
) -> bool:
    """In a buffered body: refuse a foreign placeholder, then put this service's secret in
    place of its placeholder (escaped for the media type). True if a credential went in."""
    body = req.raw_content or b""
    if not body:
        return False
    index.scan(body, service.name)
    secret = placeholder_secret(service, entry.value, entry.fields)
    ctype = req.headers.get("content-type", "")
    new = substitute_body(body, ctype, service.placeholder_text.encode(), secret)
    if new == body:
        return False
    req.raw_content = new
    if "transfer-encoding" not in req.headers:
        req.headers["content-length"] = str(len(new))
    return True
