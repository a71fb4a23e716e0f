"""Steps that do nothing for a flow are not called (session 17, ``skip10``): a stage's body
declares when it returns at once without effect (stages/flowrecord.py ``idle_unless``:
``IDLE``), and the unrolled step (seam/dispatch.py ``_go``) tests that inline and skips the
call.

* Exact: on seeded flows through the production manager over Ready, the whole stage chain
  and mitmproxy's defaults (host_inject, placeholder with and without its placeholder, a
  tunnel to no service, the reserved host, refusals before and at the gate, honeytokens
  active (a body held for the scan, a decoy in it), a token minted, statuses, streamed and
  chunked responses, no response), every body the step skipped is run anyway
  (tests/skipcheck.py): it returned None and changed nothing; and every flow ends as it
  does with no skip at all (``IDLE`` renamed: each body called, the code before).
* The lean job's full-chain flows (test_speed_flow4.py's) go through the same check.
* Twins: a wrong declaration is caught by the check; a body with work is called (the
  record's field set, the stage's attribute true, no record yet); a declaration the step
  cannot read disables the skip, and only checked identifiers reach the source.
tests/integration/test_skip10.py runs the check inside the real proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import flow, hooks, http, master, options
from mitmproxy.addons import core, dns_resolver, next_layer, proxyserver
from mitmproxy.test import tflow

from tests.canary import make_canary
from tests.skipcheck import SkipCheck
from tests.unit.test_refusal_marker import world
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.engine import default_addons
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.mint.cache import Issued
from vaultproxy.seam import defences, dispatch, speed
from vaultproxy.secret import Secret
from vaultproxy.stages import Ready, Runtime, chain, seam_hooks
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, idle_unless, record_of
from vaultproxy.stages.guard import guarded, guarded_sometimes_async
from vaultproxy.stages.inject import Inject
from vaultproxy.stages.mint import Mint
from vaultproxy.stages.request_gate import RequestGate
from vaultproxy.stages.reserved import Reserved, _Client
from vaultproxy.values.honeytokens import HoneytokenIndex

SERVICES = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"

[[service]]
name = "ph"
hosts = ["ph.example.com"]
mode = "placeholder"
auth = "bearer"
substitute_in = ["auth", "body"]
"""

#: The bodies that declare ``IDLE`` (each is skipped on the seeded flows).
DECLARED = {"Reserved.request", "RequestGate.request", "Mint.request", "Inject.request",
            "Mint.requestheaders", "Mint.responseheaders"}

_ = world  # (the fixture, from test_refusal_marker.py: test_speed_flow4.py's flows)


@dataclasses.dataclass
class _World:
    rt: Runtime
    home: Home
    secret: str = dataclasses.field(repr=False)  # (a failure report prints the fixture)


@pytest.fixture(scope="module")
def skip_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    home = Home(tmp_path_factory.mktemp("skip10") / "home")
    home.create()
    home.services.write_text(SERVICES)
    secret = make_canary()
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(secret))
    ks.set_value("ph", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    rt = Runtime(Live(st))
    defences.install(seam_hooks(rt))
    yield _World(rt, home, secret)


def _flow(rt: Runtime, rng: random.Random, decoy: bytes) -> http.HTTPFlow:
    f = tflow.tflow()
    kind = rng.choice(["svc", "svc", "svc", "ph", "ph", "none", "reserved", "evil"])
    host = {"svc": "svc.example.com", "ph": "ph.example.com", "none": "other.example.org",
            "reserved": "vaultproxy.internal", "evil": "svc.example.com"}[kind]
    f.request.scheme, f.request.host, f.request.port = "https", host, 443
    f.request.headers["host"] = "evil.example.com" if kind == "evil" else host
    f.request.method = rng.choice(["GET", "GET", "POST", "HEAD", "PUT"])
    if rng.random() < 0.5:
        f.request.headers["authorization"] = rng.choice(
            ["Bearer agent-own-token", "Bearer __vault.ph__", "Bearer __vault.svc__"])
    if f.request.method in ("POST", "PUT"):
        body = rng.choice([b"", b"{}", b'{"k": "' + decoy + b'"}', b"x" * 100,
                           b'{"key": "__vault.ph__"}'])
        f.request.content = body
        if rng.random() < 0.2:
            del f.request.headers["content-length"]
            f.request.headers["transfer-encoding"] = "chunked"
    if rng.random() < 0.1:
        f.request.headers.fields += ((b"x-folded", b"a\r\n b"),)
    if kind != "reserved" or rng.random() < 0.5:  # (else: plain http to the reserved name)
        service = rt.state().registry.by_name(kind) if kind in ("svc", "ph") else None
        if kind == "evil":
            service = rt.state().registry.by_name("svc")
        connect = Decision(service, None, (host, 443), target=(host, 443))
        rt.connections.open(f.client_conn.id, Tunnel(connect, pinned=("203.0.113.9", 443)))
    f.server_conn.address = ("203.0.113.9", 443)
    return f


def _outcome(f: http.HTTPFlow) -> tuple[Any, ...]:
    rec = f.metadata.get(KEY)
    resp = f.response
    return (
        f.request.method, f.request.data.path, f.request.headers.fields, f.request.content,
        f.request.stream is not None and bool(f.request.stream),
        resp and (resp.status_code,
                  tuple(x for x in resp.headers.fields if x[0].lower() != b"date"),
                  resp.raw_content if not resp.stream else None),
        f.error and f.error.msg, f.live,
        rec and tuple((fld.name, repr(getattr(rec, fld.name)))
                      for fld in dataclasses.fields(FlowRecord)
                      if fld.name not in ("t0", "redactor", "decision")),
        rec and rec.answered,
    )


def _run(world: _World, seed: int, n: int) -> list[tuple[Any, ...]]:
    """``n`` seeded flows through the production manager over Ready, ``chain()`` and the
    defaults, their four hook phases (or the error hook): what each ended as."""
    rt = world.rt
    rng = random.Random(seed)
    st = rt.state()
    decoy = b"vpdecoy_" + rng.randbytes(12).hex().encode()
    plain = st.snapshot
    decoyed = dataclasses.replace(plain, honeytokens=HoneytokenIndex({"decoy": decoy.decode()}))
    out: list[tuple[Any, ...]] = []

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        stages = chain(rt)
        reserved = next(s for s in stages if isinstance(s, Reserved))
        try:
            speed.tune(m).add(Ready(rt), *stages, core.Core(), default_addons.DisableH2C(),
                              proxyserver.Proxyserver(), dns_resolver.DnsResolver(),
                              next_layer.NextLayer())
            for _ in range(n):
                st.snapshot = decoyed if rng.random() < 0.3 else plain
                # (another connection's MCP client: the reserved stage has clients)
                reserved._clients.clear()
                if rng.random() < 0.3:
                    reserved._clients["another"] = _Client("bot")
                f = _flow(rt, rng, decoy)
                if rng.random() < 0.05:
                    from vaultproxy.stages.flowrecord import Refusal

                    record_of(f).refuse(Refusal("denied", "earlier"))
                    f.response = http.Response.make(403, b"no")
                for name in ("requestheaders", "request"):
                    await m.addons.handle_lifecycle(hooks.all_hooks[name](f))
                if f.response is None and rng.random() < 0.08:
                    f.error = flow.Error("upstream gone")
                    await m.addons.handle_lifecycle(hooks.all_hooks["error"](f))
                    out.append(_outcome(f))
                    rt.connections.close(f.client_conn.id)
                    continue
                rec = f.metadata.get(KEY)
                status = rng.choice([200, 200, 201, 204, 401, 500])
                if rec is not None and status != 401 and rng.random() < 0.2:
                    rec.minted = Issued("svc", 1, None, "cached", None)  # type: ignore[arg-type]
                if f.response is None:
                    body = rng.choice([b"{}", b'{"echo": "' + world.secret.encode() + b'"}',
                                       b"y" * 2000])
                    f.response = http.Response.make(
                        status, b"" if status == 204 else body,
                        {"content-type": "application/json"})
                    if rng.random() < 0.15:
                        f.response.stream = True
                    elif rng.random() < 0.15:
                        del f.response.headers["content-length"]
                        f.response.headers["transfer-encoding"] = "chunked"
                for name in ("responseheaders", "response"):
                    await m.addons.handle_lifecycle(hooks.all_hooks[name](f))
                out.append(_outcome(f))
                rt.connections.close(f.client_conn.id)  # (the connection ends)
        finally:
            st.snapshot = plain
            reserved._clients.clear()
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    return out


@pytest.mark.parametrize("seed", range(4))
def test_every_skipped_body_had_nothing_to_do(skip_world: Any, seed: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    check = SkipCheck()
    monkeypatch.setattr(dispatch, "CHECK_SKIPS", check)
    _run(skip_world, 170 + seed, 150)
    assert not check.wrong, check.wrong[:10]
    assert set(check.skipped) == DECLARED, check.skipped
    assert min(check.skipped.values()) >= 20, check.skipped


@pytest.mark.parametrize("seed", range(4))
def test_the_skipping_steps_end_every_flow_as_calling_every_body(
        skip_world: Any, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    got = _run(skip_world, 180 + seed, 150)
    monkeypatch.setattr(dispatch, "IDLE", "__vp_no_idle__")
    want = _run(skip_world, 180 + seed, 150)
    # (indices only: the flows carry the canary secret, which no failure report may show)
    differ = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not differ, differ[:10]
    # the seeds reach what the skips are about: held bodies, minted tokens, refusals
    fields = [dict(g[8]) for g in got if g[8]]
    assert any(x["hold_body"] == "True" for x in fields)
    assert any(x["minted"] != "None" for x in fields)
    assert any(g[9] for g in got) and any(x["injected"] == "True" for x in fields)


def test_the_lean_jobs_flows_skip_only_idle_bodies(monkeypatch: pytest.MonkeyPatch,
                                                   world: Any) -> None:
    from tests.unit.test_speed_flow4 import _full_chain_run
    from vaultproxy.seam import lean

    check = SkipCheck()
    monkeypatch.setattr(dispatch, "CHECK_SKIPS", check)
    for seed in range(6):
        _full_chain_run(world, lean._Job, seed, requests=5)
    assert not check.wrong, check.wrong[:10]
    assert {"Reserved.request", "RequestGate.request", "Inject.request"} <= set(check.skipped)


# -- twins ----------------------------------------------------------------------------------


def test_a_wrong_declaration_is_caught(skip_world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """RequestGate's ``requestheaders`` does work on every request (the path, the shape):
    declared idle unless the body is held, the check sees its skips change the record."""
    body = RequestGate.requestheaders.__vp_guard__[0]  # type: ignore[attr-defined]
    monkeypatch.setattr(body, "__vp_idle__", (("rec", "hold_body", "true"),), raising=False)
    check = SkipCheck()
    monkeypatch.setattr(dispatch, "CHECK_SKIPS", check)
    _run(skip_world, 190, 60)
    assert any(name == "RequestGate.requestheaders" and what.startswith("changed")
               for name, what in check.wrong), check.wrong[:5]


class _Probe:
    """A guarded stage whose bodies declare ``IDLE`` and count their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.open = False

    @guarded
    @idle_unless(rec_true=("hold_body",), rec_set=("body",))
    @handed
    def request(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        self.calls.append("request")

    @guarded_sometimes_async
    @idle_unless(rec_set=("minted",), addon_true=("open",))
    @handed
    def responseheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        self.calls.append("responseheaders")

    @guarded
    @idle_unless(addon_true=("open",))
    def response(self, flow: http.HTTPFlow) -> None:
        self.calls.append("response")


def test_a_body_with_work_is_called() -> None:
    probe = _Probe()
    issued = Issued("svc", 1, None, "cached", None)  # type: ignore[arg-type]

    async def go() -> list[list[str]]:
        m = master.Master(options.Options(), with_termlog=False)
        seen: list[list[str]] = []
        try:
            speed.tune(m).add(probe)
            cases: list[tuple[dict[str, Any], bool]] = [
                ({}, False), ({"hold_body": True}, False), ({"body": object()}, False),
                ({"minted": issued}, False), ({}, True), (None, False)]
            for fields, opened in cases:
                f = tflow.tflow(resp=True)
                if fields is not None:
                    rec = record_of(f)
                    for k, v in fields.items():
                        setattr(rec, k, v)
                probe.open = opened
                probe.calls.clear()
                for name in ("request", "responseheaders", "response"):
                    await m.addons.handle_lifecycle(hooks.all_hooks[name](f))
                seen.append(list(probe.calls))
        finally:
            m._legacy_log_events.uninstall()
        return seen

    assert asyncio.run(go()) == [
        [],  # a record with nothing set, the stage closed: all three skipped
        ["request"], ["request"], ["responseheaders"],
        ["responseheaders", "response"],
        # no record yet: the bodies that take one are called (they would make it)
        ["request", "responseheaders"],
    ]


def test_only_readable_declarations_skip() -> None:
    ok = (("rec", "hold_body", "true"),)
    assert dispatch._go(3, ok, True) == "rec is None or rec.hold_body"
    assert dispatch._go(3, (("addon", "_clients", "true"),), False) == "a3._clients"
    assert dispatch._go(3, (("addon", "x", "set"),), True) == "rec is None or a3.x is not None"
    assert dispatch._go(1, (("rec", "decision.plan.mint", "true"), ("addon", "o", "true")),
                        True) == ("rec is None or (rec.decision is not None and "
                                  "rec.decision.plan is not None and rec.decision.plan.mint)"
                                  " or a1.o")
    assert dispatch._go(1, (("rec", "a.b", "set"),), True) == (
        "rec is None or (rec.a is not None and rec.a.b is not None)")
    for bad in [None, (), ok[0], (("rec", "hold_body", "true", 1),),
                (("rec", "hold_body; import os", "true"),), (("rec", "for", "true"),),
                (("rec", "a.", "true"),), (("rec", ".b", "true"),), (("rec", "a.for", "true"),),
                (("rec", "a b", "true"),), (("flow", "live", "true"),),
                (("rec", "hold_body", "false"),), (("rec", 3, "true"),)]:
        assert dispatch._go(0, bad, True) is None, bad
    assert dispatch._go(0, ok, False) is None  # the record's, only for a body that takes it


def test_the_declared_bodies_are_what_the_step_skips() -> None:
    """The six declarations, as the step reads them (a wrapper's copy is never read)."""
    bodies = {"Mint.requestheaders": Mint.requestheaders,
        "Reserved.request": Reserved.request, "RequestGate.request": RequestGate.request,
        "Mint.request": Mint.request, "Inject.request": Inject.request,
        "Mint.responseheaders": Mint.responseheaders}
    for name, wrapper in bodies.items():
        body = wrapper.__vp_guard__[0]  # type: ignore[attr-defined]
        assert body.__qualname__ == name
        assert getattr(body, dispatch.IDLE), name
        assert getattr(body, "__wrapped__", None) is None

    def wrap(fn: Any) -> Any:
        import functools

        @functools.wraps(fn)
        def outer(*a: Any) -> Any:
            return fn(*a)

        return outer

    # a decorator that copied the declaring body's ``__dict__`` is called as it is
    step = dispatch._step(wrap(Mint.request).__get__(Mint.__new__(Mint)))
    assert step[2] is None


def test_the_generated_source_is_unchanged_without_declarations(tmp_path: Path) -> None:
    """(a chain without ``IDLE`` gets the step it got before: no test, no ``_check``)"""
    del tmp_path

    class Plain:
        @guarded
        def request(self, flow: http.HTTPFlow) -> None:
            pass

    top = (dispatch._step(Plain().request),)
    src = dispatch._unrolled_source("_step_request", "flow", top, False, (False,), (None,))
    assert "if " not in src.replace("if res is not None", "")


class _Minting:
    def __init__(self) -> None:
        self.calls = 0

    @guarded_sometimes_async
    @idle_unless(rec_true=("decision.plan.mint",))
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        self.calls += 1


def test_a_dotted_declaration_calls_the_body_when_its_path_holds() -> None:
    from types import SimpleNamespace as NS

    stage = _Minting()
    cases = [(None, 0), (NS(plan=None), 0), (NS(plan=NS(mint=False)), 0),
             (NS(plan=NS(mint=True)), 1), ("no record", 1)]

    async def go() -> list[int]:
        m = master.Master(options.Options(), with_termlog=False)
        calls = []
        try:
            speed.tune(m).add(stage)
            for decision, _want in cases:
                f = tflow.tflow()
                if decision != "no record":
                    record_of(f).decision = decision  # type: ignore[assignment]
                stage.calls = 0
                await m.addons.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
                calls.append(stage.calls)
        finally:
            m._legacy_log_events.uninstall()
        return calls

    assert asyncio.run(go()) == [want for _d, want in cases]
