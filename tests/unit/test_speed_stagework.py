"""The stages' per-request shortcuts (session 11, ``stagesfast``) answer exactly as the code
they replace, on seeded input built from the pieces that trip each rule; the code before
each shortcut is kept here as the reference.

* ``inject.names``: one view of a header section's names, lower-cased and canonical (``_``
  read as ``-``), never answered for another section (a new tuple, equal or not);
* ``check_request``'s ``drop`` test through that view, against the field-by-field loop;
* ``prepare_request`` (the strip's no-field-to-strip path through the view, and
  ``Draft.set_header`` skipping the field filter after a strip took every such field)
  against the strip loop and the always-filtering ``set_header``, every auth type, both modes;
* ``identify._in_tunnel``'s memo keyed on the raw Host and scheme, against a fresh
  ``decide()`` with Host fields doubled, missing, not UTF-8, and HTTP/2's authority;
* RequestGate's path (``_path_of``) against ``req.path.split("?", 1)[0]``;
* ResponseGate's ``_no_body`` on raw fields against the property form;
* the redactor's ``_joined`` against the ``itertools.chain`` join.
Twins: each side of each comparison is reached (stripped and not, memo hits and misses...).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from vaultproxy.config.models import Service
from vaultproxy.core import pipeline
from vaultproxy.core.decide import RANGE_HEADERS, ROUTING_HEADERS, Decision, Facts, Plan, decide
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.inject import request as inject_request
from vaultproxy.inject.minted import is_minted
from vaultproxy.inject.names import canonical_names, header_names
from vaultproxy.inject.request import InjectResult, canonical_name, minted_trigger
from vaultproxy.inject.strategy import Draft
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret
from vaultproxy.stages import response_gate
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.identify import _in_tunnel
from vaultproxy.stages.request_gate import _path_of
from vaultproxy.values import redact
from vaultproxy.values.placeholders import PlaceholderIndex

NAMES = [b"Host", b"Accept", b"Authorization", b"authorization", b"AUTHORIZATION",
         b"X-Api-Key", b"x_api_key", b"X_API-KEY", b"Cookie", b"Proxy-Authorization",
         b"proxy_authorization", b"Range", b"If_Range", b"X-Forwarded-Host",
         b"x_forwarded_host", b"Forwarded", b"X-Custom", b"x_custom", b"X-Plex-Token",
         b"Accept-Encoding", b"\xc4\xb0d", b"te_", b"_"]


TOKEN_NAMES = [n for n in NAMES if n.isascii()]  # what check_headers lets through


def _fields(rng: random.Random, most: int = 6, names: list[bytes] = NAMES
            ) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((rng.choice(names), rng.choice([b"v", b"Bearer x", b"__vault.svc__", b""]))
                 for _ in range(rng.randint(0, most)))


def test_the_names_view_is_each_field_and_never_another_sections() -> None:
    rng = random.Random(11)
    underscored = 0
    for _ in range(5000):
        fields = _fields(rng)
        # the same content in a new tuple, and a different section, in between
        again = tuple(list(fields))
        assert header_names(fields) == tuple(k.lower() for k, _ in fields)
        assert canonical_names(fields) == tuple(canonical_name(k) for k, _ in fields)
        other = _fields(rng)
        assert canonical_names(other) == tuple(canonical_name(k) for k, _ in other)
        assert header_names(other) == tuple(k.lower() for k, _ in other)
        assert canonical_names(again) == tuple(canonical_name(k) for k, _ in fields)
        assert canonical_names(fields) == tuple(canonical_name(k) for k, _ in fields)
        underscored += any(b"_" in k for k, _ in fields)
    assert 1000 < underscored < 4900, underscored


def _drop_reference(req: http.Request, drop: frozenset[bytes]) -> None:
    """``check_request``'s drop step as it read before the view."""
    fields = req.headers.fields
    for k, _ in fields:
        if k.lower().replace(b"_", b"-") in drop:
            req.headers.fields = tuple(
                (k, v) for k, v in fields if canonical_name(k) not in drop
            )
            break


def test_check_request_drops_as_the_field_loop() -> None:
    rng = random.Random(12)
    service = Service(name="svc", hosts=("svc.test",), mode="host_inject", auth="bearer")
    dropped = kept = 0
    for _ in range(4000):
        drop = rng.choice([ROUTING_HEADERS, ROUTING_HEADERS | RANGE_HEADERS])
        plan = Plan(service, "stream", 1 << 20, drop=drop)
        fields = _fields(rng, names=TOKEN_NAMES)
        a = http.Request.make("GET", "https://svc.test/x")
        a.headers.fields = fields
        b = a.copy()
        pipeline.check_request(a, plan, ("svc.test", 443), ("svc.test", 443))
        b.authority = ""  # (what check_target leaves on an HTTP/1 request)
        _drop_reference(b, drop)
        assert a.headers.fields == b.headers.fields, fields
        dropped += a.headers.fields != fields
        kept += a.headers.fields is fields
    assert dropped > 1000 and kept > 500, (dropped, kept)


class _FilteringDraft(Draft):
    """``Draft.set_header`` as it read before ``absent``: it always filters."""

    __slots__ = ()

    def set_header(self, name: str, value: bytes) -> None:
        lname = name.lower().encode("ascii")
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        self.headers.append((name.encode("ascii"), value))


def _prepare_reference(request: http.Request, service: Service, value: Secret | None,
                       fields: Mapping[str, Secret], index: PlaceholderIndex) -> InjectResult:
    """``prepare_request`` as it read before the names view: every strip through the field
    loop, every ``set_header`` filtering."""
    headers = list(request.headers.fields)
    path, sep, query = request.data.path.partition(b"?")
    pieces = [x for field in headers for x in field]
    pieces.append(path)
    pieces.append(query)
    index.scan_all(pieces, service.name)
    draft = _FilteringDraft(headers=headers, path=path, query=query if sep else None)
    if service.mode == "host_inject" or (
        is_minted(service)
        and minted_trigger(headers, service, index.placeholder_of(service.name))
    ):
        result = inject_request._host_inject(draft, service, value, fields)
    else:
        result = inject_request._placeholder(draft, service, value, fields, index)
    request.headers.fields = tuple(draft.headers)
    request.data.path = draft.target()
    return result


def _services() -> list[Service]:
    out = []
    for mode in ("host_inject", "placeholder"):
        for auth, extra in (("bearer", {}), ("basic", {}),
                            ("header", {"header_name": "X-Api-Key", "prefix": "k "}),
                            ("header", {"header_name": "X_Custom"}),
                            ("header", {"header_name": "Authorization"}),
                            ("query_param", {"param_name": "key"})):
            subs: list[dict[str, Any]] = (
                [{}] if mode == "host_inject" else
                [{"substitute_in": s} for s in (("auth",), ("auth", "header"),
                                                ("header", "query", "path"))])
            for sub in subs:
                out.append(Service(name="svc", hosts=("svc.test",), mode=mode, auth=auth,
                                   **extra, **sub))
    return out


def _outcome(fn: Any, req: http.Request, service: Service, value: Secret,
             fields: Mapping[str, Secret], index: PlaceholderIndex) -> tuple[object, ...]:
    try:
        result = fn(req, service, value, fields, index)
    except VaultproxyError as e:
        return (type(e), str(e), req.headers.fields, req.data.path)
    return (result, req.headers.fields, req.data.path)


def test_prepare_request_is_the_strip_loop_and_the_filtering_set_header() -> None:
    rng = random.Random(13)
    index = PlaceholderIndex({"__vault.svc__": "svc", "__vault.other__": "other"})
    value = Secret(make_canary())
    fields = {"username": Secret("user"), "password": Secret(make_canary())}
    services = _services()
    stripped = untouched = refused = 0
    for _ in range(6000):
        service = rng.choice(services)
        req = tutils.treq(path=rng.choice([b"/x", b"/x?key=__vault.svc__", b"/__vault.svc__",
                                           b"/x?a=1&key=v"]), headers=http.Headers())
        req.headers.fields = tuple(
            (rng.choice(NAMES), rng.choice([b"v", b"Bearer __vault.svc__", b"__vault.svc__",
                                            b"k __vault.svc__", b"__vault.other__", b"x"]))
            for _ in range(rng.randint(0, 6)))
        sent = req.headers.fields
        a, b = req.copy(), req.copy()
        want = _outcome(_prepare_reference, a, service, value, fields, index)
        got = _outcome(inject_request.prepare_request, b, service, value, fields, index)
        assert got == want, (service.mode, service.auth, service.substitute_in, sent)
        if isinstance(want[0], InjectResult):
            stripped += bool(want[0].stripped)
            untouched += not want[0].stripped
        else:
            refused += 1
    assert stripped > 1000 and untouched > 1000 and refused > 100, (stripped, untouched, refused)


# -- Identify's memo on the raw Host -------------------------------------------------------

SERVICES = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyState]:
    home = Home(tmp_path_factory.mktemp("speed-stagework") / "home")
    home.create()
    home.services.write_text(SERVICES)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield st


HOSTS = [b"svc.example.com", b"SVC.example.com.", b"svc.example.com:443", b"evil.test",
         b"svc.example.com:444", b"sv\xffc.example.com", b"svc.example.com, evil.test"]


def _pick[T](rng: random.Random, common: T, *rare: T) -> T:
    """``common`` about nine times in ten, else one of ``rare``."""
    return common if rng.random() < 0.9 else rng.choice(rare)


def _request(rng: random.Random) -> http.Request:
    req = http.Request.make("GET", "https://svc.example.com/x")
    fields = [(k, v) for k, v in req.headers.fields if k.lower() != b"host"]
    for _ in range(_pick(rng, 1, 0, 2)):
        fields.insert(rng.randint(0, len(fields)), (rng.choice([b"Host", b"host", b"HOST"]),
                                                    _pick(rng, HOSTS[0], *HOSTS[1:])))
    req.headers.fields = tuple(fields)
    req.scheme = _pick(rng, "https", "http", "HTTPS")
    req.http_version = _pick(rng, "HTTP/1.1", "HTTP/1.0", "HTTP/2.0")
    req.data.authority = _pick(rng, b"", b"svc.example.com", b"evil.test")
    return req


def _fresh(st: ProxyState, tunnel: Tunnel, req: http.Request) -> Decision:
    """What Identify decided before any memo: a Facts and ``decide`` per request."""
    connect = tunnel.decision
    facts = Facts(
        "connect", tunnel.host, tunnel.port, host_header=req.host_header or "",
        sni=tunnel.sni, scheme=req.scheme, agent=connect.agent,
        agent_digest=connect.agent_digest, now=time.time(), cert_agent=tunnel.cert_agent,
    )
    return decide(facts, st.registry, None if st.locked else st.session.agents)


def _view(d: Decision) -> tuple[object, ...]:
    refusal = d.refusal
    return (d.service.name if d.service else None, d.agent, d.dial, d.plan, d.agent_digest,
            d.target, None if refusal is None else (type(refusal), refusal.code, str(refusal)))


def test_the_memo_on_the_raw_host_is_decide(state: ProxyState) -> None:
    rng = random.Random(14)
    reused = refused = 0
    for _ in range(60):
        connect = Decision(None, None, ("svc.example.com", 443),
                           target=("svc.example.com", 443))
        tunnel = Tunnel(connect, sni=rng.choice([None, "svc.example.com"]))
        for _ in range(rng.randint(1, 40)):
            req = _request(rng)
            want = _fresh(state, tunnel, req)
            before = tunnel.memo
            got = _in_tunnel(state, tunnel, req)
            assert _view(got) == _view(want), (req.headers.fields, req.scheme,
                                               req.http_version, req.data.authority)
            reused += before is not None and got is before[5]
            refused += want.refusal is not None
    assert reused > 200 and refused > 200, (reused, refused)


# -- the small ones --------------------------------------------------------------------------

def test_the_path_before_the_query_is_the_decoded_splits() -> None:
    rng = random.Random(15)
    alphabet = [b"/", b"?", b"a", b"%3F", b"\xc3", b"\xa9", b"\xe2\x82", b"\xff", b"\x80", b"?"]
    queried = 0
    for _ in range(20000):
        target = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        req = http.Request.make("GET", "https://a.test/")
        req.data.path = target
        assert _path_of(target) == req.path.split("?", 1)[0], target
        queried += b"?" in target
    assert 5000 < queried < 19000, queried


def _no_body_reference(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    code = flow.response.status_code
    return flow.request.method == "HEAD" or code < 200 or code in (204, 304)


def test_no_body_is_the_property_form() -> None:
    rng = random.Random(16)
    methods = [b"GET", b"HEAD", b"head", b"HeAd", b"H\xc3\x89AD", b"\xc4\xb1HEAD", b"HEAD ",
               b"POST", b"\xff", b"CONNECT"]
    none = 0
    for _ in range(5000):
        f = tflow.tflow(resp=True)
        f.request.data.method = rng.choice(methods)
        assert f.response is not None
        f.response.status_code = rng.choice([100, 101, 199, 200, 204, 206, 304, 404, 500])
        want = _no_body_reference(f)
        assert response_gate._no_body(f) == want, (f.request.data.method, f.response.status_code)
        none += want
    assert 1000 < none < 4000, none


def test_joined_is_the_chained_join() -> None:
    rng = random.Random(17)
    for _ in range(3000):
        n = rng.choice([0, 1, 2, 5, 24, 25, 40])
        fields: Any = tuple((rng.choice(NAMES), rng.choice([b"v", b"", b"a\nb"]))
                            for _ in range(n))
        if n and rng.random() < 0.2:  # a field that is a list: the general join
            fields = (*fields[:-1], list(fields[-1]))
        assert redact._joined(fields) == b"\n".join(itertools.chain.from_iterable(fields))


def test_set_header_filters_unless_a_strip_took_every_such_field() -> None:
    """Twin of the ``absent`` shortcut: without a strip before it, ``set_header`` replaces
    every spelling; after one ``set_header``, nothing counts as absent any more."""
    draft = Draft(headers=[(b"authorization", b"a"), (b"AUTHORIZATION", b"b")], path=b"/",
                  query=None)
    draft.set_header("Authorization", b"c")
    assert draft.headers == [(b"Authorization", b"c")]
    assert draft.absent == frozenset()
    draft.absent = frozenset({b"authorization"})  # as a strip leaves it
    draft.headers = [(b"X", b"y")]
    draft.set_header("Authorization", b"d")
    draft.set_header("authorization", b"e")  # the first one's field is there now
    assert draft.headers == [(b"X", b"y"), (b"authorization", b"e")]
