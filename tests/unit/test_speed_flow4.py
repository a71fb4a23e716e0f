"""The lean path's per-request objects of session 13 (``flow4``) answer exactly as the code
they replace, on seeded input; the code before each shortcut is kept as the reference.

* ``IndexedAddonManager.flow_steps[name](flow)`` (seam/dispatch.py): the generated step of a
  flow event taking the flow itself, against ``handle_lifecycle(Hook(flow))`` on 800 seeded
  addon chains (test_speed_r2stages.py's: plain, guarded, grouped, raising, halting,
  ``update``); a changed chain drops the steps (the twin: a stale step misses the new addon).
* ``_Job._request`` with ``flow_steps`` (seam/lean.py): test_lean_job.py's seeded stage
  behaviours (kills, intercepts, the agent gone, errors, chunks, streams) reached through a
  manager with steps for a seeded subset of the hooks, against the job as it was (its
  reference, which builds every hook object); and the full vaultproxy stage chain through the
  production manager (seam/speed.py), the job against its reference: what each addon sees at
  each hook, the flow's end state and the audit lines are the same.
* ``_completed_maker()`` against ``events.HookCompleted``: the same objects (types,
  attributes in order); a class that is not the dataclass it was written against gets the
  constructor. (The request's ``LeanHook``, made inline in ``LeanLayer._serve``, is
  test_speed_intake.py's.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import hooks, http, master, options
from mitmproxy.proxy import events
from mitmproxy.test import tflow

from tests.unit import test_lean_job as lean_job
from tests.unit.test_refusal_marker import HOST, _flow, world
from tests.unit.test_speed_r2stages import _chain
from vaultproxy.seam import dispatch, lean, speed
from vaultproxy.seam.pool import POOLED, PoolExchangeHook
from vaultproxy.stages import (
    Deadline,
    Identify,
    Inject,
    Mint,
    Record,
    RequestGate,
    Reserved,
    ResponseGate,
)
from vaultproxy.stages.flowrecord import KEY, FlowRecord

_ = world  # (the fixture, from test_refusal_marker.py)

LEAN_HOOKS = ("requestheaders", "request", PoolExchangeHook.name, "responseheaders",
              "response")


# -- flow_steps against handle_lifecycle ---------------------------------------------------


def test_a_flow_step_is_handle_lifecycle_of_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261207 + 4)
    log: list[tuple[object, ...]] = []
    monkeypatch.setattr(dispatch, "_addon_error",
                        lambda err: log.append(("error", type(err).__name__, str(err))))
    stepped = 0

    async def go() -> None:
        nonlocal stepped
        for _ in range(800):
            chain, _shapes = _chain(rng, log)
            m = master.Master(options.Options(), with_termlog=False)
            try:
                am = dispatch.IndexedAddonManager(m)
                m.addons = am
                am.add(*chain)
                name = rng.choice(LEAN_HOOKS)
                cls = hooks.all_hooks[name]
                f = tflow.tflow()
                outcomes = []
                for which in ("lifecycle", "step", "lifecycle", "step"):
                    log.clear()
                    try:
                        if which == "step":
                            step = am.flow_steps[name]  # (filled by the first event)
                            await step(f)
                        else:
                            await am.handle_lifecycle(cls(f))
                        raised = None
                    except Exception as err:  # noqa: BLE001 - OptionsError and the like
                        raised = (type(err).__name__, str(err))
                    outcomes.append((list(log), raised))
                assert outcomes[0] == outcomes[1] == outcomes[2] == outcomes[3], chain
                stepped += 1
            finally:
                m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert stepped == 800


def test_a_changed_chain_drops_the_flow_steps() -> None:
    log: list[tuple[object, ...]] = []
    from tests.unit.test_speed_stages3 import _addon

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            am = dispatch.IndexedAddonManager(m)
            m.addons = am
            held = am.flow_steps  # (the job holds the dict: cleared in place, never replaced)
            am.add(_addon(1, "plain", "none", log))
            f = tflow.tflow()
            assert "requestheaders" not in held
            await am.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
            assert am.flow_steps is held and "requestheaders" in held
            await held["requestheaders"](f)
            assert log == [("called", 1), ("called", 1)]
            am.add(_addon(2, "guarded", "none", log))
            assert "requestheaders" not in held  # (a stale step would miss addon 2)
            log.clear()
            await am.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
            await held["requestheaders"](f)
            assert log == [("called", 1), ("called", 2)] * 2
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())


def test_the_lean_hooks_have_one_field_the_flow() -> None:
    """What the job passes to a step is the one field of each hook it stands for."""
    for name in LEAN_HOOKS:
        fields = dataclasses.fields(hooks.all_hooks[name])  # type: ignore[arg-type]
        assert [f.name for f in fields] == ["flow"], name
    assert (lean._REQUESTHEADERS, lean._REQUEST, lean._POOL_EXCHANGE, lean._RESPONSEHEADERS,
            lean._RESPONSE) == LEAN_HOOKS


# -- the job through flow_steps, against the job that built every hook ---------------------


class _StepAddons(lean_job._Addons):
    """test_lean_job.py's seeded behaviours, with a flow step for a seeded subset of the
    hooks (each the same behaviour as ``handle_lifecycle`` of that hook)."""

    def __init__(self, seed: int, lean_: Any) -> None:
        super().__init__(seed, lean_)
        picks = random.Random(seed * 7 + 1)
        self.flow_steps: dict[str, Any] = {}
        for name in LEAN_HOOKS:
            if picks.random() < 0.8:
                self.flow_steps[name] = self._step(name)

    def _step(self, name: str) -> Any:
        def step(flow: http.HTTPFlow) -> Any:
            return lean_job._Addons.handle_lifecycle(self, SimpleNamespace(flow=flow, name=name))

        return step


def _run_job(kind: type[lean._Job], addons_kind: type[lean_job._Addons],
             seed: int) -> tuple[Any, ...]:
    rng = random.Random(seed)
    flow = tflow.tflow()
    flow.live = True
    flow.request.method = rng.choice(["GET", "GET", "HEAD", "POST", "head"])
    lean_ = lean_job._Lean(flow.client_conn, rng.random() < 0.8) if rng.random() < 0.9 else None
    job = kind(flow, lean_)  # type: ignore[arg-type]
    addons = addons_kind(seed, lean_)
    asyncio.run(job.run(addons))
    return lean_job._state(job, addons)


@pytest.mark.parametrize("seed", range(400))
def test_the_job_through_flow_steps_is_the_job_that_built_hooks(seed: int) -> None:
    assert (_run_job(lean._Job, _StepAddons, seed)
            == _run_job(lean_job._Reference, lean_job._Addons, seed))


# -- the full stage chain: what each addon sees ---------------------------------------------


def _digest(value: bytes | None) -> str | None:
    """(What the watchers note of a value that may hold the injected canary: its digest, so
    a failing comparison shows no secret.)"""
    return None if value is None else hashlib.sha256(value).hexdigest()[:16]


def _hidden(fields: Any) -> tuple[tuple[bytes, str | None], ...]:
    return tuple((k, _digest(v)) for k, v in fields)


class _Watch:
    """An addon that notes, at each of the job's hooks, what the flow shows it."""

    def __init__(self, tag: str, log: list[Any]) -> None:
        self.tag, self.log = tag, log
        self.name = f"watch_{tag}"  # (mitmproxy's addon name: one per chain)

    def _see(self, name: str, f: http.HTTPFlow) -> None:
        rec = f.metadata.get(KEY)
        resp = f.response
        self.log.append((
            self.tag, name, f.request.method, f.request.host, f.request.path,
            _hidden(f.request.headers.fields), _digest(f.request.raw_content),
            resp and (resp.status_code, tuple(resp.headers.fields), resp.raw_content),
            f.error and f.error.msg, f.live, f.intercepted,
            rec and tuple((fld.name, repr(getattr(rec, fld.name)))
                          for fld in dataclasses.fields(FlowRecord)
                          if fld.name not in ("t0", "redactor", "minted", "decision")),
            rec and rec.decision and (rec.decision.service and rec.decision.service.name,
                                      rec.decision.target),
        ))

    def requestheaders(self, f: http.HTTPFlow) -> None:
        self._see("requestheaders", f)

    def request(self, f: http.HTTPFlow) -> None:
        self._see("request", f)

    def vaultproxy_pool_exchange(self, f: http.HTTPFlow) -> None:
        self._see("exchange", f)

    def responseheaders(self, f: http.HTTPFlow) -> None:
        self._see("responseheaders", f)

    def response(self, f: http.HTTPFlow) -> None:
        self._see("response", f)

    def error(self, f: http.HTTPFlow) -> None:
        self._see("error", f)


class _Upstream:
    """The pool's part, seeded: takes the flow in ``requestheaders`` (the exchange the job
    asks for), answers it in the exchange hook, or fails it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def requestheaders(self, f: http.HTTPFlow) -> None:
        if f.response is None and self.rng.random() < 0.95:
            f.metadata[POOLED] = SimpleNamespace(error=None, body=b"", chunk=None,
                                                 body_limit=1 << 20)

    def vaultproxy_pool_exchange(self, f: http.HTTPFlow) -> None:
        ex = f.metadata[POOLED]
        if self.rng.random() < 0.05:
            ex.error = "upstream gone"
            return
        status = self.rng.choice([200, 200, 201, 204, 401, 403, 500])
        body = b"" if status == 204 else self.rng.choice([b"ok", b'{"a":1}'])
        f.response = http.Response.make(status, body, {"content-type": "application/json"})
        ex.body = body


def _audit_lines(home: Any) -> list[dict[str, Any]]:
    if not home.audit.exists():
        return []
    lines = [json.loads(x) for x in home.audit.read_text().splitlines() if x.strip()]
    for line in lines:
        for key in ("ts", "ms", "duration_ms", "id", "flow", "elapsed_ms"):
            line.pop(key, None)
    return lines


def _full_chain_run(world: Any, kind: type[lean._Job], seed: int,
                    requests: int = 3) -> list[tuple[Any, ...]]:
    """``requests`` seeded requests, one after the other, through one manager holding the
    stage chain (the first of each hook builds the manager's step from a hook object; the
    job takes the steps for the later ones): per request, what it ended with."""
    rt, home = world[0], world[1]
    rng = random.Random(seed)
    log: list[Any] = []
    chain = [_Watch("first", log), Reserved(rt), Identify(rt), RequestGate(rt), Mint(rt),
             Inject(rt), _Upstream(rng), ResponseGate(rt), Record(rt), Deadline(rt),
             _Watch("last", log)]
    got: list[tuple[Any, ...]] = []

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(*chain)
            for _ in range(requests):
                f = _flow(rt, rng.choice([HOST, HOST, HOST, "evil.example.com"]))
                f.live = True
                f.request.method = rng.choice(["GET", "POST", "HEAD"])
                if rng.random() < 0.3:
                    del f.request.headers["authorization"]
                if rng.random() < 0.1:
                    f.request.headers.fields += ((b"x-folded", b"a\r\n b"),)
                rt.state().audit.flush()
                before = len(_audit_lines(home))
                log.clear()
                job = kind(f, lean_job._Lean(f.client_conn, True))  # type: ignore[arg-type]
                await job.run(m.addons)
                rt.state().audit.flush()
                resp = f.response
                got.append((
                    job.outcome, job.code, job.message, list(log), f.live,
                    f.error and f.error.msg,
                    resp and (resp.status_code, _hidden(resp.headers.fields),
                              _digest(resp.raw_content)),
                    _audit_lines(home)[before:]))
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    return got


@pytest.mark.parametrize("seed", range(30))
def test_the_full_chain_sees_the_same_through_flow_steps(world: Any, seed: int) -> None:
    got = _full_chain_run(world, lean._Job, seed)
    want = _full_chain_run(world, lean_job._Reference, seed)
    assert got == want
    assert all(state[3] for state in got), "the watchers saw the hooks"


def test_the_full_chain_runs_the_flow_steps(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin of the comparison: the job really took the steps (of its five hooks, only each
    one's first event on a manager made a hook object), and the seeds reach every answer
    (refused, injected, upstream errors and statuses, audited)."""
    made: list[str] = []
    for name in LEAN_HOOKS:
        cls = hooks.all_hooks[name]

        def counting(self: Any, *args: Any, _stock: Any = cls.__init__,
                     _name: str = name) -> None:
            made.append(_name)
            _stock(self, *args)

        monkeypatch.setattr(cls, "__init__", counting)
    seen = set()
    events_seen = set()
    requests = 0
    for seed in range(30):
        made.clear()
        for state in _full_chain_run(world, lean._Job, seed):
            requests += 1
            seen.add((state[0], state[6] and state[6][0]))
            events_seen.update(line.get("event") for line in state[7])
        assert len(made) == len(set(made)), made  # (one per name and manager, at most)
    outcomes = {o for o, _ in seen}
    statuses = {s for _, s in seen}
    assert requests == 90
    assert {lean.SEND, lean.ERROR} <= outcomes, seen
    assert {421, 200, 500} <= statuses, seen
    assert "request" in events_seen, events_seen


# -- the completed event ------------------------------------------------------------------


def test_the_completed_event_is_the_one_its_constructor_makes() -> None:
    make = lean._completed_maker()
    assert make is not events.HookCompleted  # (the fast one, on this mitmproxy)
    for hook in (lean.LeanHook(tflow.tflow()), PoolExchangeHook(tflow.tflow())):
        got, want = make(hook), events.HookCompleted(hook)
        assert type(got) is type(want)
        assert list(vars(got).items()) == list(vars(want).items())
        assert got.command is hook and got.reply is None
        assert repr(got) == repr(want)


def test_a_changed_completed_event_keeps_its_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin: a ``HookCompleted`` with another field, a ``__post_init__`` or its own
    ``__setattr__`` is made by its own constructor."""

    # (stand-ins, not subclasses: a ``CommandCompleted`` subclass registers itself)
    @dataclasses.dataclass
    class Same:
        command: Any
        reply: None = None

    @dataclasses.dataclass
    class Extra(Same):
        more: int = 0

    @dataclasses.dataclass
    class Post(Same):
        def __post_init__(self) -> None:
            self.seen = True

    @dataclasses.dataclass
    class Guarded(Same):
        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

    monkeypatch.setattr(events, "HookCompleted", Same)
    assert lean._completed_maker() is not Same  # (the stand-in as it was written against)
    for cls in (Extra, Post, Guarded):
        monkeypatch.setattr(events, "HookCompleted", cls)
        assert lean._completed_maker() is cls, cls
    monkeypatch.undo()
    assert lean._completed_maker() is not events.HookCompleted



# -- the record read without a call ---------------------------------------------------------


def test_the_inline_record_read_is_record_of() -> None:
    """``flow.metadata.get(KEY) or record_of(flow)`` (the stages' every-request reads) is
    ``record_of(flow)``: the record there, else a new one put there (once)."""
    from vaultproxy.stages.flowrecord import record_of

    rng = random.Random(13)
    for _ in range(200):
        f = tflow.tflow()
        if rng.random() < 0.5:
            record_of(f)
        before = f.metadata.get(KEY)
        got = f.metadata.get(KEY) or record_of(f)
        assert got is record_of(f) is f.metadata[KEY]
        assert before is None or got is before
        assert type(got) is FlowRecord


# -- message data field by field -------------------------------------------------------------


def _data_items(data: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in vars(data).items() if k != "timestamp_start"]


def test_message_data_field_by_field_is_the_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast_head``'s ``RequestData`` and ``response_of``'s ``ResponseData``, made field by
    field while ``MessageData.__post_init__`` is seam/speed.py's no-op, are the objects
    their dataclass ``__init__`` makes (types, attributes in order); with mitmproxy's own
    type check in place, that ``__init__`` (and the check) makes them."""
    from vaultproxy.seam import objects

    assert objects.DATA_PLAIN
    rng = random.Random(4)
    checks: list[str] = []
    stock = http.MessageData.__post_init__

    def counting(self: Any) -> None:
        checks.append(type(self).__name__)
        stock(self)

    for post_init in (objects.no_field_type_check, counting):
        monkeypatch.setattr(http.MessageData, "__post_init__", post_init)
        checks.clear()
        for _ in range(200):
            method = rng.choice([b"GET", b"POST", b"PATCH"])
            path = rng.choice([b"/", b"/v1/x?y=1", b"/a%20b"])
            fields = [(b"host", b"h"), (b"x-a", rng.choice([b"1", b"two words"]))]
            head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
                method, path, b"".join(b"%s: %s\r\n" % f for f in fields))
            made = lean.fast_head(head)
            assert made is not None
            req = made[0]
            want = http.RequestData(
                http_version=b"HTTP/1.1", headers=req.data.headers, content=None,
                trailers=None, timestamp_start=0.0, timestamp_end=None, host="", port=0,
                method=method, scheme=b"", authority=b"", path=path)
            assert type(req.data) is http.RequestData
            assert _data_items(req.data) == _data_items(want)
            assert list(vars(req.data)) == list(vars(want))
            hdrs = objects.headers_of(fields)
            status, reason = rng.choice([(200, b"OK"), (404, b"Not Found")])
            resp = objects.response_of(b"HTTP/1.1", status, reason, hdrs, 5.0)
            rwant = http.ResponseData(
                http_version=b"HTTP/1.1", headers=hdrs, content=None, trailers=None,
                timestamp_start=5.0, timestamp_end=None, status_code=status, reason=reason)
            assert type(resp.data) is http.ResponseData
            assert list(vars(resp.data).items()) == list(vars(rwant).items())
        if post_init is counting:  # (the fast path never skips a check that is there)
            assert checks.count("RequestData") == 400 and checks.count("ResponseData") == 400
        else:
            assert checks == []


def test_a_changed_message_data_is_made_by_its_init() -> None:
    """The twin: a data class with another field, its own ``__init__`` or ``__setattr__``
    is not made field by field."""
    from vaultproxy.seam import objects

    @dataclasses.dataclass
    class More(http.RequestData):
        extra: int = 0

    class OwnInit(http.RequestData):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)

    @dataclasses.dataclass
    class Guarded(http.RequestData):
        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

    assert objects._plain_data(http.RequestData, objects.REQUEST_FIELDS)
    for cls in (More, OwnInit, Guarded):
        assert not objects._plain_data(cls, objects.REQUEST_FIELDS), cls
    assert not objects._plain_data(http.RequestData, objects.RESPONSE_FIELDS)


# -- answered: a plain attribute its two writers keep ------------------------------------------


def _writes(attr_names: set[str]) -> list[tuple[str, str, int]]:
    """Every ``<x>.<name> = ...`` (plain, augmented, annotated, or ``setattr(x, "<name>",
    ...)``) in vaultproxy/, as (file, enclosing function, line)."""
    import ast
    from pathlib import Path

    import vaultproxy

    root = Path(vaultproxy.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node

        def owner(node: ast.AST, parents: dict[ast.AST, ast.AST] = parents) -> str:
            while node in parents:
                node = parents[node]
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    return node.name
            return "<module>"

        for node in ast.walk(tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("setattr", "delattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value in attr_names):
                found.append((str(path.relative_to(root)), owner(node), node.lineno))
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in attr_names:
                        found.append((str(path.relative_to(root)), owner(node), node.lineno))
    return found


def test_only_refuse_and_serve_write_what_answered_stands_for() -> None:
    """``answered`` is ``refusal is not None or served`` only while nothing else writes
    those two (or ``answered``): a write anywhere else would leave a refused flow looking
    unanswered to every later stage (a credential injected into a refused request)."""
    writes = _writes({"refusal", "served", "answered"})
    where = {(file, func) for file, func, _line in writes}
    assert where == {("stages/flowrecord.py", "refuse"), ("stages/flowrecord.py", "serve"),
                     ("stages/flowrecord.py", "__init__")}, writes  # (__init__: the defaults)


def test_the_writers_answer_and_a_direct_write_is_found(tmp_path: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The writers set ``answered``; the twin: the scan finds a write outside them (a
    module written for the purpose, under a scanned root)."""
    rec = FlowRecord()
    assert rec.answered is False and FlowRecord().answered is False
    rec.serve()
    assert rec.answered and rec.served and rec.refusal is None
    other = FlowRecord()
    from vaultproxy.stages.flowrecord import Refusal

    other.refuse(Refusal("c", "m"))
    assert other.answered and not other.served and other.refusal == Refusal("c", "m")
    assert FlowRecord().answered is False  # (nothing shared)
    import vaultproxy

    pkg = tmp_path / "vaultproxy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(
        "def sneak(rec):\n    rec.refusal = 1\n\ndef sneak2(rec):\n"
        "    setattr(rec, 'served', True)\n\ndef sneak3(rec):\n    rec.answered = False\n")
    monkeypatch.setattr(vaultproxy, "__file__", str(pkg / "__init__.py"))
    assert {(f, fn) for f, fn, _ in _writes({"refusal", "served", "answered"})} == {
        ("bad.py", "sneak"), ("bad.py", "sneak2"), ("bad.py", "sneak3")}
