"""Fail closed under the indexed dispatch: each guarded stage hook's guard runs inline in
seam/dispatch.py (``GUARD``), not in its wrapper; the outcome must be the wrapper's.

For every guarded hook of every stage of the chain (Ready, then ``chain()``), a fault is
injected into that one hook's body (raised on entry, and, for a hook whose awaitable runs
inside the guard, raised inside that awaitable), and the hook's event is fired through the
whole chain plus an ``Upstream`` sentinel after it (standing for what would leave the proxy)
in two managers: production's ``IndexedAddonManager`` and mitmproxy's own ``AddonManager``,
which calls each stage through its ``guarded`` wrapper (the old path, and mitmdump's). Both
must end the same: the same answer on the flow (status, code, body), the same refusal, the
same killed/broken/server-error marks, the same later stages run; and the flow is denied
before the sentinel sees it unanswered. Negative twin per hook: the same event without the
fault is not refused (so the deny comes from the fault, not from the set-up)."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mitmproxy import addonmanager, connection, hooks, http, master, options, tls
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer, NextLayerHook
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from tests.harness.proxy import cheap_kdf_floor
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.seam import defences, speed
from vaultproxy.seam.dispatch import GUARD, IndexedAddonManager
from vaultproxy.secret import Secret
from vaultproxy.stages import Ready, Runtime, chain, guard
from vaultproxy.stages import route as route_mod
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import record_of

SERVICES = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"
"""
PINNED = ("203.0.113.9", 443)


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyState]:
    home = Home(tmp_path_factory.mktemp("speed-guard") / "home")
    home.create()
    home.services.write_text(SERVICES)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(make_canary()))
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield st


def _stage_classes() -> list[type]:
    return [type(s) for s in (Ready(Runtime()), *chain(Runtime()))]


GUARDED = [
    (cls, name)
    for cls in _stage_classes()
    for name in sorted(vars(cls))
    if getattr(vars(cls)[name], GUARD, None) is not None
]

#: which fault: ``entry`` (the body raises before anything) or ``awaited`` (the awaitable
#: the body returns raises; only for hooks whose awaitable runs inside the guard)
_armed: list[tuple[type, str, str]] = []


def _faulty(body: Callable[..., Any], cls: type, name: str) -> Callable[..., Any]:
    async def fail_later() -> None:
        await asyncio.sleep(0)
        raise Boom("forced, while awaited")

    if inspect.iscoroutinefunction(body):

        async def afaulty(self: Any, *args: Any) -> Any:
            if (cls, name, "entry") in _armed:
                raise Boom("forced")
            if (cls, name, "awaited") in _armed:
                await fail_later()
            return await body(self, *args)

        fn: Callable[..., Any] = afaulty
    else:

        def faulty(self: Any, *args: Any) -> Any:
            if (cls, name, "entry") in _armed:
                raise Boom("forced")
            if (cls, name, "awaited") in _armed:
                body(self, *args)
                return fail_later()
            return body(self, *args)

        fn = faulty
    fn.__qualname__, fn.__name__ = body.__qualname__, body.__name__
    return fn


@pytest.fixture(scope="module", autouse=True)
def faults() -> Iterator[None]:
    """Every guarded hook rebuilt with its own guard kind over a body that raises when
    armed: the wrapper (old path) and ``GUARD`` (the inline guard) both carry it."""
    mp = pytest.MonkeyPatch()
    for cls, name in GUARDED:
        wrapper = vars(cls)[name]
        body, _fail, guard_awaitable = getattr(wrapper, GUARD)
        faulty = _faulty(body, cls, name)
        if inspect.iscoroutinefunction(body) or not guard_awaitable:
            rebuilt = guard.guarded(faulty)
        else:
            rebuilt = guard.guarded_sometimes_async(faulty)
        mp.setattr(cls, name, rebuilt)
    # No DNS here: the CONNECT target resolves to a documentation address.
    async def resolved(host: str, port: int, policy: object) -> tuple[str, int]:
        return PINNED

    mp.setattr(route_mod, "resolve_checked", resolved)
    # Ready also waits for the engine seam's patches, global to a process (tested in
    # test_seam_checks.py); the stages alone are under test here.
    mp.setattr(defences, "_installed", True)
    yield
    mp.undo()


class Upstream:
    """After the chain: what would leave the proxy (the request upstream, the response to
    the agent). Records, per event, whether the flow was still unrefused when it got here."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def _note(self, hook: str, arg: Any) -> None:
        if isinstance(arg, http.HTTPFlow):
            rec = record_of(arg)
            self.seen.append((hook, rec.refusal is None))
        else:
            self.seen.append((hook, True))

    def __getattr__(self, hook: str) -> Any:
        if hook not in hooks.all_hooks or hook in (
                "load", "configure", "running", "done", "add_log", "update"):
            raise AttributeError(hook)
        return lambda arg: self._note(hook, arg)


def _flow(rt: Runtime, client: connection.Client, *, ws: bool = False) -> http.HTTPFlow:
    f = tflow.twebsocketflow() if ws else tflow.tflow()
    f.client_conn = client
    f.server_conn.address = PINNED
    f.request.scheme, f.request.host, f.request.port = "https", "svc.example.com", 443
    f.request.headers["host"] = "svc.example.com"
    f.request.headers["authorization"] = "Bearer agent-own-token"
    return f


def _open(rt: Runtime, client: connection.Client) -> None:
    svc = rt.state().registry.by_name("svc")
    connect = Decision(svc, None, PINNED, target=("svc.example.com", 443))
    rt.connections.open(client.id, Tunnel(connect, pinned=PINNED, sni="svc.example.com"))


def _context(client: connection.Client, server: connection.Server) -> Context:
    ctx = Context(client, options.Options())
    ctx.server = server
    return ctx


def _event(rt: Runtime, hook: str) -> tuple[list[hooks.Hook], hooks.Hook, Any]:
    """The events that bring a connection to the point of ``hook`` (fired unarmed), the
    hook's event, and its argument."""
    client = tflow.tclient_conn()
    if hook in ("http_connect", "http_connect_error"):
        f = tflow.tflow()
        f.client_conn = client
        f.request.method, f.request.host, f.request.port = "CONNECT", "svc.example.com", 443
        before: list[hooks.Hook] = []
        if hook == "http_connect_error":
            before = [hooks.all_hooks["http_connect"](f)]
            f.response = http.Response.make(502)
        return before, hooks.all_hooks[hook](f), f
    _open(rt, client)
    if hook in ("next_layer", "tls_clienthello", "server_connect", "tls_start_server"):
        server = tflow.tserver_conn()
        server.address = ("svc.example.com", 443)
        ctx = _context(client, server)
        if hook == "next_layer":
            return [], NextLayerHook(NextLayer(ctx)), ctx
        if hook == "tls_clienthello":
            hello = types.SimpleNamespace(sni="svc.example.com")
            data = tls.ClientHelloData(ctx, hello)  # type: ignore[arg-type]
            return [], hooks.all_hooks[hook](data), data
        if hook == "server_connect":
            sdata = server_hooks.ServerConnectionHookData(server=server, client=client)
            return [], server_hooks.ServerConnectHook(sdata), sdata
        tdata = tls.TlsData(server, ctx)
        return [], hooks.all_hooks[hook](tdata), tdata
    ws = hook.startswith("websocket")
    f = _flow(rt, client, ws=ws)
    head = [hooks.all_hooks["requestheaders"](f), hooks.all_hooks["request"](f)]
    if hook == "requestheaders":
        return [], hooks.all_hooks[hook](f), f
    if hook == "request":
        return head[:1], hooks.all_hooks[hook](f), f
    if hook == "error":
        f.response = None
        f.error = tflow.terr()
        return head, hooks.all_hooks[hook](f), f
    if hook in ("responseheaders", "response") or ws:
        f.response = tutils.tresp(content=b"upstream body")
        f.response.headers["content-type"] = "text/plain"
        return head, hooks.all_hooks[hook](f), f
    raise AssertionError(f"no event for {hook}")


def _outcome(rt: Runtime, arg: Any, upstream: Upstream) -> tuple[Any, ...]:
    """Everything a deny can change, as comparable values."""
    if isinstance(arg, http.HTTPFlow):
        rec = record_of(arg)
        resp = arg.response
        answer = None if resp is None else (
            resp.status_code, resp.headers.get("x-vaultproxy-error"),
            resp.raw_content if resp.stream is False or resp.stream is None else "stream")
        refusal = None if rec.refusal is None else (rec.refusal.code, rec.refusal.message)
        client = arg.client_conn
        return (answer, refusal, arg.error.msg if arg.error is not None else None,
                rt.connections.broken(client.id), tuple(upstream.seen))
    client = getattr(arg, "client", None) or arg.context.client
    server = getattr(arg, "server", None)
    return (rt.connections.broken(client.id), getattr(server, "error", None),
            tuple(upstream.seen))


def _fire(state: ProxyState, indexed: bool, hook: str,
          armed: tuple[type, str, str] | None) -> tuple[tuple[Any, ...], Any]:
    rt = Runtime(Live(state))
    upstream = Upstream()

    async def go() -> tuple[tuple[Any, ...], Any]:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            manager = speed.tune(m) if indexed else m.addons
            assert isinstance(manager, IndexedAddonManager) is indexed
            assert type(manager) is IndexedAddonManager or type(manager) is (
                addonmanager.AddonManager)
            manager.add(Ready(rt), *chain(rt), upstream)
            before, event, arg = _event(rt, hook)
            for prep in before:
                await manager.handle_lifecycle(prep)
            upstream.seen.clear()
            if armed is not None:
                _armed.append(armed)
            try:
                await manager.handle_lifecycle(event)
            finally:
                _armed.clear()
            return _outcome(rt, arg, upstream), arg
        finally:
            m._legacy_log_events.uninstall()

    return asyncio.run(go())


CASES = [(cls, name, "entry") for cls, name in GUARDED] + [
    (cls, name, "awaited") for cls, name in GUARDED if getattr(vars(cls)[name], GUARD)[2]
]


@pytest.mark.parametrize(("cls", "name", "where"), CASES,
                         ids=[f"{c.__name__}.{n}-{w}" for c, n, w in CASES])
def test_a_fault_in_each_stage_hook_denies_as_the_wrapper_did(
        state: ProxyState, cls: type, name: str, where: str) -> None:
    armed = (cls, name, where)
    new, arg = _fire(state, True, name, armed)
    old, _ = _fire(state, False, name, armed)
    assert new == old, (new, old)
    if isinstance(arg, http.HTTPFlow):
        denied = record_of(arg).refusal is not None
        assert denied, f"{cls.__name__}.{name}: the fault was not a refusal"
        resp = arg.response
        if resp is not None and resp.stream is False:
            assert resp.status_code >= 400 and resp.headers.get("x-vaultproxy-error")
        # the sentinel after the chain never saw the flow unrefused
        assert new[-1] and all(not open_ for _hook, open_ in new[-1]), new[-1]
        if name in ("http_connect", "requestheaders", "request"):
            assert resp is not None, "the request would go upstream"
    elif name in ("server_connect",):
        assert new[1], "the upstream dial was not refused"
    else:
        assert new[0], "the connection was not marked broken"


@pytest.mark.parametrize(("cls", "name"), GUARDED,
                         ids=[f"{c.__name__}.{n}" for c, n in GUARDED])
def test_twin_the_same_event_without_the_fault_is_not_refused(
        state: ProxyState, cls: type, name: str) -> None:
    new, arg = _fire(state, True, name, None)
    old, _ = _fire(state, False, name, None)
    assert new == old, (new, old)
    if isinstance(arg, http.HTTPFlow):
        assert record_of(arg).refusal is None, record_of(arg).refusal
        assert new[-1] and all(open_ for _hook, open_ in new[-1]), new
    elif name == "server_connect":
        assert not new[1]
    else:
        assert not new[0]


def test_every_stage_hook_is_covered() -> None:
    """The chain's guarded hooks are all here (a new one is covered without an edit)."""
    names = {f"{c.__name__}.{n}" for c, n in GUARDED}
    assert {"Identify.requestheaders", "Inject.requestheaders", "RequestGate.request",
            "Mint.requestheaders", "ResponseGate.response", "Record.response",
            "Dial.server_connect", "Route.http_connect"} <= names
    assert len(names) >= 30


class _Child:
    """A plain or guarded ``requestheaders`` that records its call, then fails or halts."""

    def __init__(self, name: str, calls: list[str], what: str = "") -> None:
        self.name, self.calls, self.what = name, calls, what

    def requestheaders(self, f: http.HTTPFlow) -> None:
        self.calls.append(self.name)
        if self.what == "fail":
            raise RuntimeError(f"{self.name} fails")
        if self.what == "halt":
            from mitmproxy import exceptions

            raise exceptions.AddonHalt()


class _GuardedChild(_Child):
    @guard.guarded
    def requestheaders(self, f: http.HTTPFlow) -> None:
        self.calls.append(self.name)
        if self.what == "fail":
            raise RuntimeError(f"{self.name} fails")

    @guard.guarded_sometimes_async
    def request(self, f: http.HTTPFlow) -> Any:
        async def later() -> None:
            await asyncio.sleep(0)
            self.calls.append(self.name + "-awaited")
            if self.what == "fail":
                raise RuntimeError(f"{self.name} fails later")

        self.calls.append(self.name)
        return later()


class _Parent:
    def __init__(self, *children: object) -> None:
        self.addons = list(children)


@pytest.mark.parametrize("hook", ["requestheaders", "request"])
@pytest.mark.parametrize("shape", ["fail", "halt", "guarded-fail", "ok"])
def test_addons_with_children_run_as_in_mitmproxy(hook: str, shape: str) -> None:
    """The one-argument loop folds an addon with children into one step: a plain child's
    exception ends its group (the next top-level addon runs), a halt ends the event, a
    guarded child's fault denies and its group goes on; the same as mitmproxy's manager."""

    def run(indexed: bool) -> tuple[list[str], object]:
        calls: list[str] = []
        f = tflow.tflow()
        kind = {"fail": ("plain", "fail"), "halt": ("plain", "halt"),
                "guarded-fail": ("guarded", "fail"), "ok": ("guarded", "")}[shape]
        middle = (_GuardedChild if kind[0] == "guarded" else _Child)("b", calls, kind[1])
        chain_ = [_GuardedChild("a", calls), _Parent(middle, _GuardedChild("c", calls)),
                  _GuardedChild("d", calls)]

        async def go() -> None:
            m = master.Master(options.Options(), with_termlog=False)
            try:
                manager = speed.tune(m) if indexed else m.addons
                manager.add(*chain_)
                await manager.handle_lifecycle(hooks.all_hooks[hook](f))
            finally:
                m._legacy_log_events.uninstall()

        asyncio.run(go())
        rec = record_of(f)
        return calls, None if rec.refusal is None else rec.refusal.code

    new, old = run(True), run(False)
    assert new == old
    if shape == "guarded-fail" and hook == "requestheaders":
        assert new[1] == "internal" and "c" in new[0] and "d" in new[0]
    if shape == "fail" and hook == "requestheaders":
        assert "c" not in new[0] and "d" in new[0]
    if shape == "halt" and hook == "requestheaders":
        assert new[0] == ["a", "b"]


def test_a_decorator_over_a_guarded_hook_is_not_bypassed() -> None:
    """``functools.wraps`` copies the wrapper's ``__dict__`` (its ``GUARD``) onto a decorator
    put over it: the manager must call that decorator, not the inner body. Twin: the
    undecorated hook is run inline (its body, not its wrapper)."""
    import functools

    calls: list[str] = []

    def outer(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, f: http.HTTPFlow) -> Any:
            calls.append("outer")
            return fn(self, f)

        return wrapper

    class Decorated:
        @outer
        @guard.guarded
        def requestheaders(self, f: http.HTTPFlow) -> None:
            calls.append("body")

    class Plain:
        @guard.guarded
        def requestheaders(self, f: http.HTTPFlow) -> None:
            calls.append("plain")

    assert getattr(Decorated.requestheaders, GUARD, None) is not None  # copied by wraps

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            manager = speed.tune(m)
            manager.add(Decorated(), Plain())
            await manager.handle_lifecycle(hooks.all_hooks["requestheaders"](tflow.tflow()))
            assert isinstance(manager, IndexedAddonManager)
            (_field, top) = manager._flat["requestheaders"]
            assert top[0][2] is None and top[1][2] is not None  # plain call; guard inline
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert calls == ["outer", "body", "plain"]
