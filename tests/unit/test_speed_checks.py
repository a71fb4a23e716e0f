"""The request checks' regex-free fast paths answer exactly as the expressions they replace,
on seeded input built from the pieces that trip each rule.

* ``PlaceholderIndex._may_trip`` against ``scan_all``'s regex pre-test of the joined request
  (``%``, ``+``, ``\\``, ``_any_re`` and ``_BASIC_WORD``), custom placeholders included;
* ``check_target`` on raw ``data`` fields against its property-based form (the one before
  this change, kept here as the reference), including what it leaves in ``data.authority``.
Twins: each side of each comparison is reached (matches and misses, refusals and passes)."""

from __future__ import annotations

import random

from mitmproxy import http

from vaultproxy.core import pipeline
from vaultproxy.errors import HostMismatch, InvalidRequest, VaultproxyError
from vaultproxy.net.hostnames import normal_host, same_target
from vaultproxy.values import placeholders
from vaultproxy.values.placeholders import PlaceholderIndex

INDEX = PlaceholderIndex({"__vault.gh__": "gh", "PH-OAI-1": "oai", "x__vault.c__y": "c"})
PIECES = [
    b"", b"host", b"%", b"a+b", b"\\u005f", b"__vault.gh__", b"PH-OAI-1", b"PH-OAI-",
    b"__vault.", b"__vault.Nope__",
    b"__vault.nope__", b"__vault._x__", b"__vault", b"_vault.gh__", b"x__vault.c__y", b"BASIC",
    b"bAsIc", b"bas", b"ic", b"Basic dTpw", b"B\xc3\xa1sic", b"\xc5\xbfasic", b"ba\nsic", b"PH-",
]


def _may_trip_reference(data: bytes) -> bool:
    """What ``scan_all`` asked of the joined request before ``_may_trip``."""
    return (b"%" in data or b"+" in data or b"\\" in data
            or INDEX._any_re.search(data) is not None
            or placeholders._BASIC_WORD.search(data) is not None)


def test_scan_pretest_is_the_regexes() -> None:
    rng = random.Random(2)
    hits = 0
    for _ in range(20000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
        want = _may_trip_reference(data)
        assert INDEX._may_trip(data) == want, data
        hits += want
    assert 2000 < hits < 18000, hits
    for byte in range(256):  # every byte alone and beside each literal
        for around in (b"", b"basic", b"__vault.gh__", b"PH-OAI-1", b"bAsI"):
            data = bytes([byte]) + around + bytes([byte])
            assert INDEX._may_trip(data) == _may_trip_reference(data), data


def _check_target_reference(
    req: http.Request, host: str, port: int, dialed: tuple[str, int] | None
) -> None:
    """``check_target`` as it read before its fast path (mitmproxy's properties)."""
    target = (normal_host(req.host), req.port)
    if (
        req.scheme != "https"
        or (target != (host, port) and (req.host, req.port) != dialed)
        or (req.authority and not same_target(req.authority, host, port))
    ):
        raise HostMismatch("the request target names another host than the tunnel target")
    if req.http_version.startswith("HTTP/1"):
        req.authority = ""  # origin-form upstream
    path = req.data.path
    if path == b"*" and req.method == "OPTIONS":
        return
    if not path.startswith(b"/") or path.startswith(b"//"):
        raise InvalidRequest("the request target must be an origin-form path (/...)")


def _pick[T](rng: random.Random, common: T, *rare: T) -> T:
    """``common`` about two times in three, else one of ``rare``."""
    return common if rng.random() < 0.65 else rng.choice(rare)


def _request(rng: random.Random) -> http.Request:
    return http.Request(
        _pick(rng, "svc.test", "SVC.test.", "127.0.0.1", "evil.test", "[::1]"),
        _pick(rng, 443, 8443, 9),
        _pick(rng, b"GET", b"OPTIONS", b"get"),
        _pick(rng, b"https", b"http", b"HTTPS"),
        _pick(rng, b"", b"svc.test", b"svc.test:443", b"evil.test", b"svc.test:8443",
              b"xn--nxasmq6b.test", b"\xff.test", b"SVC.TEST"),
        _pick(rng, b"/x", b"*", b"//x", b"x", b"/"),
        _pick(rng, b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.0", b"HTTP/3"),
        http.Headers(), b"", None, 0.0, None,
    )


def _outcome(req: http.Request, host: str, port: int, dialed: tuple[str, int] | None,
             fn: object) -> tuple[object, ...]:
    try:
        fn(req, host, port, dialed)  # type: ignore[operator]
    except VaultproxyError as e:
        return (type(e), str(e), req.data.authority)
    return (None, None, req.data.authority)


def test_check_target_is_the_property_form() -> None:
    rng = random.Random(3)
    refused = passed = 0
    for _ in range(6000):
        template = _request(rng)
        host, port = _pick(rng, ("svc.test", 443), ("svc.test", 8443))
        dialed = rng.choice([None, ("127.0.0.1", 9), ("127.0.0.1", 443)])
        a, b = template.copy(), template.copy()
        want = _outcome(a, host, port, dialed, _check_target_reference)
        assert _outcome(b, host, port, dialed, pipeline.check_target) == want, template.data
        refused += want[0] is not None
        passed += want[0] is None
    assert refused > 1000 and passed > 500, (refused, passed)


NAMES = [b"Host", b"host", b"HOST", b"Proxy-Authorization", b"proxy-authorization", b"Upgrade",
         b"X-A", b"Ho\xc5\x9ft", b"H\xc3\xb6st", b"te"]


def test_header_names_and_host_header_are_mitmproxys() -> None:
    """``header_names`` membership is ``name in Headers`` (any case), ``header_value`` is
    ``Headers.get``, ``host_header`` is
    ``Request.host_header``; a changed header section is never answered from the memo."""
    rng = random.Random(4)
    hosts = 0
    for _ in range(4000):
        fields = tuple((rng.choice(NAMES), rng.choice([b"a.test", b"b.test:1", b"\xff"]))
                       for _ in range(rng.randint(0, 5)))
        req = http.Request.make("GET", "https://a.test/")
        req.headers.fields = fields
        req.http_version = rng.choice(["HTTP/1.1", "HTTP/2.0", "HTTP/1.0", "HTTP/3"])
        req.authority = rng.choice(["", "c.test"])
        for name in ("host", "proxy-authorization", "upgrade", "te", "x-b"):
            assert (name.encode() in pipeline.header_names(req.headers.fields)) == (
                name in req.headers), (name, fields)
            assert pipeline.header_value(req.headers.fields, name.encode()) == (
                req.headers.get(name)), (name, fields)
        assert pipeline.host_header(req) == req.host_header, fields
        hosts += req.host_header is not None
        # the memo follows the section: a new tuple (the same content or not) is read anew
        req.headers.fields = (*fields, (b"Upgrade", b"h2c"))
        assert b"upgrade" in pipeline.header_names(req.headers.fields)
        assert pipeline.header_names(req.headers.fields[:-1]) == tuple(
            k.lower() for k, _ in fields)
    assert 1000 < hosts < 3900, hosts
