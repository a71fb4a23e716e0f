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
removed, except, in placeholder mode with ``header`` allowed, values carrying this service's
placeholder (those are substituted). ``Proxy-Authorization`` is always removed: it is
addressed to a proxy, never to the upstream. For ``auth = "query_param"`` the agent's own
``param_name`` parameters are treated the same way (kept only if they carry the placeholder).

A placeholder in a surface not listed in ``substitute_in`` is left as it is: it is not a
secret, and the upstream simply sees the placeholder text.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.inject.basic import Basic
from vaultproxy.inject.bearer import Bearer
from vaultproxy.inject.header import Header
from vaultproxy.inject.query import drop_params
from vaultproxy.inject.query_param import QueryParam
from vaultproxy.inject.strategy import Draft, Strategy, header_safe
from vaultproxy.placeholders import PlaceholderIndex, basic_credentials, substitute
from vaultproxy.secret import Secret

STRIP_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "x-plex-token", "cookie")
_ALWAYS_STRIP = frozenset({b"proxy-authorization"})

STRATEGIES: Mapping[str, Strategy] = {
    s.auth: s for s in (Bearer(), Header(), Basic(), QueryParam())
}


@dataclass(frozen=True, slots=True)
class InjectResult:
    """What ``prepare_request`` did. Names only, never values."""

    injected: bool
    surfaces: tuple[str, ...] = ()  # where a placeholder was substituted
    stripped: tuple[str, ...] = ()  # lower-case header names (and "query:<param>") removed


def strategy_for(service: Service) -> Strategy:
    return STRATEGIES[service.auth]


def placeholder_secret(
    service: Service, value: Secret | None, fields: Mapping[str, Secret]
) -> bytes:
    """What this service's placeholder is replaced with (e.g. for ``substitute_body``)."""
    return strategy_for(service).placeholder_secret(service, value, fields)


_BASE_STRIP = frozenset(n.encode("ascii") for n in STRIP_HEADERS)
_strip_cache: dict[str, frozenset[bytes]] = {}


def strip_names(service: Service) -> frozenset[bytes]:
    if not service.header_name:
        return _BASE_STRIP
    names = _strip_cache.get(service.header_name)
    if names is None:
        if len(_strip_cache) > 1024:  # header names come from services.toml: few, bounded
            _strip_cache.clear()
        names = _BASE_STRIP | {service.header_name.lower().encode("ascii")}
        _strip_cache[service.header_name] = names
    return names


def prepare_request(
    request: http.Request,
    service: Service,
    value: Secret | None,
    fields: Mapping[str, Secret],
    index: PlaceholderIndex,
) -> InjectResult:
    """Strip, then inject (host_inject) or substitute (placeholder) on ``request`` in place."""
    headers = list(request.headers.fields)
    path, sep, query = request.data.path.partition(b"?")
    for k, v in headers:
        index.scan(k, service.name)
        index.scan(v, service.name)
    index.scan(path, service.name)
    index.scan(query, service.name)

    draft = Draft(headers=headers, path=path, query=query if sep else None)
    if service.mode == "host_inject":
        result = _host_inject(draft, service, value, fields)
    else:
        result = _placeholder(draft, service, value, fields, index)

    request.headers.fields = tuple(draft.headers)
    request.data.path = draft.target()
    return result


def _strip(draft: Draft, service: Service, keep_value: bytes | None) -> None:
    """Remove strip-list headers; keep values containing ``keep_value`` (if given)."""
    names = strip_names(service)
    kept: list[tuple[bytes, bytes]] = []
    for k, v in draft.headers:
        lk = k.lower()
        if lk in names and not (
            keep_value is not None and lk not in _ALWAYS_STRIP and _carries(v, keep_value)
        ):
            draft.stripped.append(lk.decode("ascii", "replace"))
            continue
        kept.append((k, v))
    draft.headers = kept


def _carries(value: bytes, placeholder: bytes) -> bool:
    if placeholder in value:
        return True
    creds = basic_credentials(value)
    return creds is not None and placeholder in creds


def _host_inject(
    draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
) -> InjectResult:
    _strip(draft, service, keep_value=None)
    strategy_for(service).inject(draft, service, value, fields)
    return InjectResult(injected=True, stripped=_dedup(draft.stripped))


def _placeholder(
    draft: Draft,
    service: Service,
    value: Secret | None,
    fields: Mapping[str, Secret],
    index: PlaceholderIndex,
) -> InjectResult:
    ph = index.placeholder_of(service.name)
    allowed = set(service.substitute_in)
    _strip(draft, service, keep_value=ph if "header" in allowed else None)
    if service.auth == "query_param" and service.param_name and draft.query:
        keep_query = "query" in allowed
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

    if "header" in allowed and any(_carries(v, ph) for _, v in draft.headers):
        draft.headers = [(k, _sub_header(v, ph, get_secret(), service)) for k, v in draft.headers]
        surfaces.append("header")
    if "query" in allowed and draft.query is not None and ph in draft.query:
        draft.query = substitute(draft.query, ph, get_secret(), "percent")
        surfaces.append("query")
    if "path" in allowed and ph in draft.path:
        draft.path = substitute(draft.path, ph, get_secret(), "percent")
        surfaces.append("path")
    return InjectResult(
        injected=bool(surfaces), surfaces=tuple(surfaces), stripped=_dedup(draft.stripped)
    )


def _sub_header(value: bytes, ph: bytes, secret: bytes, service: Service) -> bytes:
    creds = basic_credentials(value)
    if creds is not None and ph in creds:
        scheme = value.strip().split(None, 1)[0]
        return scheme + b" " + base64.b64encode(creds.replace(ph, secret))
    if ph in value:
        return substitute(value, ph, header_safe(service, secret), "raw")
    return value


def _dedup(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
