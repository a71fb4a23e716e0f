"""Session 16 (``stages9``): the request stages' shortcuts answer exactly as the code they
replace, on seeded input; that code is kept here as the reference.

* ``inject_head``'s host_inject shortcut reads the Accept-Encoding of the injected head
  through the names ``names_with`` just handed the memo (one field: by its index; none: no
  look-up; several: ``header_value``), and calls ``limit_accept_encoding`` only when its memo
  does not hold the value as its own limit: the same head, answer and error as before, over
  seeded requests with no, one and several Accept-Encoding fields (any case), values the
  limit keeps, changes or drops, the limit's memo full, cleared or cold, and the other
  shapes (placeholders, fields to strip, Basic, CR/LF-free hostile values) that go the
  long way;
* ``Pool.requestheaders`` answers a head with no Transfer-Encoding, Upgrade, TE or
  Content-Length field by its method alone (``_small_body``'s own answer for it), and takes
  the Exchange's two numbers from the settings object it last saw (``_sizes``): the same
  Exchange, or none, over seeded heads and settings objects that come and go;
* ``Deadline.request`` takes ``float(response_timeout)``, ``float(idle_timeout)`` and their
  minimum from ``_settings``' record of the settings in place: the same queue and the same
  entry (its due time, both waits) as ``_wait`` over seeded changes of the settings.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from vaultproxy.core import pipeline
from vaultproxy.core.decide import Plan
from vaultproxy.core.pipeline import Injected, header_value
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import BodyTooLarge, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.inject import names as names_mod
from vaultproxy.inject import prepare_request
from vaultproxy.inject.minted import credential
from vaultproxy.inject.request import _FEW_FIELDS, _pieces, made_for
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.keystore.entries import SharedEntry
from vaultproxy.mint.cache import Issued
from vaultproxy.net import decoding
from vaultproxy.net.decoding import limit_accept_encoding
from vaultproxy.seam import deadlines
from vaultproxy.secret import Secret
from vaultproxy.stages import deadline as deadline_mod
from vaultproxy.stages import pool as pool_stage

# -- inject_head: the reference (main e5905eb) ---------------------------------------------


def _names_with_reference(fields: Any, more: Any, name: bytes) -> None:
    """``names_with`` before stages9 (it returned nothing)."""
    memo = names_mod._names_memo
    if memo[0] is fields and type(more) is tuple:
        names_mod._names_memo = (more, memo[1] + (name,))


def _inject_head_reference(
    st: ProxyState, req: http.Request, plan: Plan, minted: Issued | None
) -> Injected:
    """``inject_head`` before stages9: ``header_value`` and ``limit_accept_encoding`` on
    every request."""
    service = plan.service
    entry = st.session.entry_for(service)
    data = req.data
    headers = data.headers
    made = (made_for(entry, service) if minted is None and type(entry) is SharedEntry
            and service.mode == "host_inject" else None)
    sent = headers.fields
    if made is not None and type(sent) is tuple and made.strip.isdisjoint(
            names_mod.canonical_names(sent)):
        path, sep, query = data.path.partition(b"?")
        try:
            pieces = sum(sent, ()) + (path, query) if len(sent) <= _FEW_FIELDS else None
        except TypeError:
            pieces = None
        st.snapshot.index.scan_all(pieces or _pieces(sent, path, query), service.name)
        more = sent + (made.field,)
        headers.fields = more
        _names_with_reference(sent, more, made.lname)
        injected = True
    else:
        made = None
        secret, fields = entry.value, entry.fields
        if minted is not None:
            secret, fields = credential(minted, service.auth)
        injected = prepare_request(req, service, secret, fields, st.snapshot.index).injected
    offered = header_value(headers.fields, b"accept-encoding")
    if offered is not None:
        limit_accept_encoding(headers, offered)
    if plan.body == "sign":
        wait = not pipeline.sign_at_head(req, service, entry.fields)
        injected = injected or not wait
    else:
        wait = plan.body == "substitute"
    if wait:
        length = req.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > plan.max_body:
            raise BodyTooLarge()
    elif made is not None:
        done = made.done
        if done is None:
            done = made.done = Injected(entry, True, False)
        return done  # type: ignore[no-any-return]
    return Injected(entry, injected, wait)


SERVICES = (
    '[[service]]\nname = "bear"\nhosts = ["bear.test"]\nmode = "host_inject"\n'
    'auth = "bearer"\n'
    '[[service]]\nname = "head"\nhosts = ["head.test"]\nmode = "host_inject"\n'
    'auth = "header"\nheader_name = "Accept-Encoding"\n'  # the injected field is one of them
    '[[service]]\nname = "bas"\nhosts = ["bas.test"]\nmode = "host_inject"\n'
    'auth = "basic"\n'
    '[[service]]\nname = "ph"\nhosts = ["ph.test"]\nmode = "placeholder"\n'
    'auth = "bearer"\nsubstitute_in = ["auth", "header", "query"]\n'
)

NAMES = [b"Accept-Encoding", b"accept-encoding", b"ACCEPT-ENCODING", b"Accept-Encodings",
         b"Accept", b"Host", b"Authorization", b"Content-Length", b"User-Agent", b"accept_encoding"]
ENCODINGS = [b"identity", b"gzip", b"gzip, br, zstd", b"gzip, compress", b"compress", b"",
             b"br;q=1.0, *;q=0", b"GZIP", b"identity, x-\xff", b"\xc3\xa9, gzip", b"deflate ,br"]
VALUES = [b"v", b"7", b"99999", b"bear.test", b"Bearer __vault.ph__", b"__vault.nobody__",
          b"a%20b", b"Basic dXNlcjpwYXNz", b"text/plain"]
PATHS = [b"/x", b"/x?q=1", b"/x?q=__vault.ph__", b"/z?"]


def _home(tmp_path: Path) -> tuple[ProxyState, Keystore]:
    home = Home(tmp_path / "home")
    home.create()
    home.services.write_text(SERVICES)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    for name in ("bear", "head", "ph"):
        ks.set_value(name, Secret(make_canary()))
    ks.set_field("bas", "username", Secret("user"))
    ks.set_field("bas", "password", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    return st, ks


def _request(fields: tuple[tuple[bytes, bytes], ...], path: bytes) -> http.Request:
    req = tutils.treq(path=path, headers=http.Headers())
    req.headers.fields = fields
    return req


def _outcome(st: ProxyState, fn: Any, req: http.Request, plan: Plan) -> object:
    try:
        done = fn(st, req, plan, None)
    except VaultproxyError as e:
        return ("raised", type(e).__name__, str(e))
    fields = req.data.headers.fields
    return ("done", type(fields).__name__, fields, req.data.path, id(done.entry),
            done.injected, done.wait_body, names_mod._names_memo[0] is fields,
            names_mod.header_names(fields))


def _fields(rng: random.Random) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for _ in range(rng.choice([0, 1, 2, 2, 3, 4])):
        name = rng.choice(NAMES)
        value = rng.choice(ENCODINGS) if b"ncoding" in name else rng.choice(VALUES)
        out.append((name, value))
    if rng.random() < 0.5:  # the common one: exactly one Accept-Encoding
        out = [f for f in out if f[0].lower() != b"accept-encoding"]
        out.insert(rng.randrange(len(out) + 1), (b"Accept-Encoding", rng.choice(ENCODINGS)))
    return tuple(out)


def test_inject_head_reads_accept_encoding_as_the_reference(tmp_path: Path) -> None:
    st, _ = _home(tmp_path)
    rng = random.Random(0x5169)
    memo_before = dict(decoding._limited)
    count = {"one": 0, "none": 0, "several": 0, "changed": 0, "raised": 0}
    try:
        for i in range(3000):
            roll = rng.random()
            if roll < 0.02:
                decoding._limited.clear()  # the limit's memo cold again
            elif roll < 0.03:  # full: the next new value clears it
                for k in range(256 - len(decoding._limited)):
                    decoding._limited[f"filler-{k}"] = "identity"
            service = rng.choice(list(st.registry.services))
            fields = _fields(rng)
            path = rng.choice(PATHS)
            plan = Plan(service, rng.choice(["stream", "stream", "substitute"]),  # type: ignore[arg-type]
                        rng.choice([1 << 20, 10]))
            warm = rng.random() < 0.8  # as Identify leaves the names memo (or not)
            if warm:
                names_mod.header_names(fields)
            else:
                names_mod._names_memo = (object(), ())
            want = _outcome(st, _inject_head_reference, _request(fields, path), plan)
            if warm:
                names_mod.header_names(fields)
            else:
                names_mod._names_memo = (object(), ())
            got = _outcome(st, pipeline.inject_head, _request(fields, path), plan)
            assert got == want, (i, service.name, fields)
            if got[0] == "raised":
                count["raised"] += 1
                continue
            n = sum(1 for k, _ in fields if k.lower() == b"accept-encoding")
            count["one" if n == 1 else "none" if n == 0 else "several"] += 1
            sent = [v for k, v in fields if k.lower() == b"accept-encoding"]
            now = [v for k, v in got[2] if k.lower() == b"accept-encoding"]  # type: ignore[index]
            count["changed"] += sent != now[:len(sent)]
    finally:
        decoding._limited.clear()
        decoding._limited.update(memo_before)
    assert all(v > 100 for v in count.values()), count


def test_names_with_hands_back_what_header_names_computes() -> None:
    rng = random.Random(16)
    for _ in range(500):
        fields = tuple((rng.choice(NAMES), b"v") for _ in range(rng.randrange(5)))
        field = (rng.choice(NAMES), b"x")
        more = fields + (field,)
        if rng.random() < 0.7:
            names_mod.header_names(fields)
            assert names_mod.names_with(fields, more, field[0].lower()) == tuple(
                k.lower() for k, _ in more)
            assert names_mod._names_memo[0] is more
        else:
            cold = (object(), ())
            names_mod._names_memo = cold
            assert names_mod.names_with(fields, more, field[0].lower()) is None
            assert names_mod._names_memo is cold


# -- Pool.requestheaders: the Exchange's numbers once per settings object ------------------


def test_pool_exchange_sizes_follow_the_settings_object() -> None:
    """Settings objects that come and go (a reload makes a new one; an old one may come back
    as the state of another worker's test): each Exchange has its own settings' numbers."""
    from vaultproxy.config.models import ProxySettings

    rng = random.Random(0x9001)
    settings = [ProxySettings(max_body_mb=rng.choice([1, 2, 32, 100]),
                              idle_timeout=rng.choice([1, 30, 300, 0.5]))
                for _ in range(6)]
    installed = pool_stage.seam_pool._installed
    pool_stage.seam_pool._installed = True
    try:
        for i in range(600):
            cfg = rng.choice(settings)
            tunnel = SimpleNamespace(decision=SimpleNamespace(service=object()),
                                     pinned=("127.0.0.1", 443))
            st = SimpleNamespace(snapshot=SimpleNamespace(registry=SimpleNamespace(
                config=SimpleNamespace(proxy=cfg))))
            stage = pool_stage.Pool.__new__(pool_stage.Pool)
            stage.rt = SimpleNamespace(  # type: ignore[assignment]
                live=SimpleNamespace(state=st),
                connections=SimpleNamespace(tunnels={"c": tunnel}))
            flow = tflow.tflow()
            flow.client_conn.id = "c"
            flow.request.headers.fields = ((b"Host", b"h"),)
            rec = SimpleNamespace(answered=False, decision=SimpleNamespace(plan=object()))
            pool_stage.Pool.requestheaders.__wrapped__(stage, flow, rec)  # type: ignore[attr-defined]
            ex = flow.metadata[pool_stage.seam_pool.POOLED]
            want = pool_stage.Exchange(tunnel=tunnel,  # type: ignore[arg-type]
                                       body_limit=cfg.max_body_mb * 1024 * 1024,
                                       idle=float(cfg.idle_timeout))
            assert list(vars(ex).items()) == list(vars(want).items()), i
            assert type(ex.idle) is float and type(ex.body_limit) is int
    finally:
        pool_stage.seam_pool._installed = installed


# -- Deadline.request: the waits once per settings ---------------------------------------


def _reference_wait(stage: deadline_mod.Deadline, flow: http.HTTPFlow) -> Any:
    cfg = stage._settings()
    assert cfg is not None
    response, idle = float(cfg.response_timeout), float(cfg.idle_timeout)
    return min(response, idle), response, idle


class _Options:
    tcp_timeout = 0

    def update(self, **kw: Any) -> None:
        self.tcp_timeout = kw["tcp_timeout"]


def test_deadline_request_queues_the_settings_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0xDEAD)
    cfgs = [SimpleNamespace(connect_timeout=rng.choice([1, 5, 10.5]),
                            response_timeout=rng.choice([5, 30, 60, 7.5]),
                            idle_timeout=rng.choice([10, 30, 90, 7.5])) for _ in range(5)]
    states = [SimpleNamespace(snapshot=SimpleNamespace(registry=SimpleNamespace(
        config=SimpleNamespace(proxy=c)))) for c in cfgs]
    monkeypatch.setattr(deadline_mod, "ctx", SimpleNamespace(options=_Options()))
    monkeypatch.setattr(deadlines, "connect_timeout", 7.0)
    rt = SimpleNamespace(live=SimpleNamespace(state=states[0]))
    stage = deadline_mod.Deadline(rt)  # type: ignore[arg-type]
    changed = 0

    async def go() -> None:
        nonlocal changed
        for i in range(400):
            if rng.random() < 0.2:
                rt.live.state = rng.choice(states)
                changed += 1
            if rng.random() < 0.05:  # the connect timeout changed from outside
                deadlines.connect_timeout = rng.choice([1.0, 99.0])
            flow = tflow.tflow()
            loop = asyncio.get_running_loop()
            before = loop.time()
            deadline_mod.Deadline.request.__wrapped__(stage, flow)  # type: ignore[attr-defined]
            after = loop.time()
            first, response, idle = _reference_wait(stage, flow)
            queued = [q for q in stage._queues.values() if flow.id in q.flows]
            assert len(queued) == 1 and queued[0].seconds == first, i
            due, got_flow, client, now, got_response, got_idle = queued[0].flows[flow.id]
            assert got_flow is flow and client == flow.client_conn.id
            assert (got_response, got_idle) == (response, idle)
            assert type(got_response) is float and type(got_idle) is float
            assert before <= now <= after and due == now + first
            stage.response(flow)
        if stage._sweeper is not None:
            stage._sweeper.cancel()

    asyncio.run(go())
    assert changed > 50
