"""The ``request`` record written after the response's send (seam/aftersend.py).

The lean layer opens a flow's ``Later`` before the ``response`` hook of a response it sends
whole; the Record stage makes the record then (its bytes, timestamp, duration, metrics as
before) and hands it to the ``Later``; the layer hands it to the audit sink right after the
response's one write, or at once when no response is sent. Here:

- the Record stage's record through a ``Later`` is the one it writes without (the same
  bytes in ``audit.jsonl``, the same counters), on seeded flows: statuses, bodies,
  injected or forwarded, refused by a stage, answered by a stage, an agent that went away;
  to a plain ``AuditLog`` (its write shortcut) and to a subclass (the record handed over);
- a write that fails keeps the record under both ``on_failure`` policies, refuses nothing,
  and writes the same bytes once writing works again (twin: the same as without a ``Later``);
- a sink that raises is logged and loses nothing else: the ``Later`` runs once, is closed;
- the layer (seeded event streams, as tests/unit/test_lean_events.py drives it): for a sent
  response the record goes to the sink right after the response's ``SendData`` and before
  any later command; for a kill, an error or a stream at once, before the close or the
  answer; exactly once per flow; the commands are those of the layer without a ``Later``;
- the hook task hands over a record the layer never got to (a cancelled ``server_event``).
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHook,
)

from tests.unit.test_lean_events import _complete, _Side, _stream
from tests.unit.test_refusal_marker import _chain, _flow, fire, world  # noqa: F401
from vaultproxy.audit import canonical, metrics
from vaultproxy.audit import event as audit_event
from vaultproxy.audit.log import AuditLog
from vaultproxy.seam import aftersend, lean
from vaultproxy.stages import Runtime
from vaultproxy.stages.flowrecord import record_of

HOST = "svc.example.com"


class _Sub(AuditLog):
    """A sink that is not an ``AuditLog`` itself (as a worker's): handed the record."""

    counts_metrics = False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The audit's clocks, fixed per flow (the wall clock of ``ts``, the monotonic one of
    ``duration_ms``): a record made at the same instant has the same bytes."""
    now = {"wall": 1_790_000_000.0, "mono": 1000.0}
    monkeypatch.setattr(audit_event, "_time", lambda: now["wall"])
    monkeypatch.setattr(canonical, "time", SimpleNamespace(monotonic=lambda: now["mono"]))
    return now


def _seeded_flow(rt: Runtime, rng: random.Random) -> tuple[http.HTTPFlow, list[object]]:
    """A request through the request stages, then the upstream's (or a stage's) answer."""
    chain = _chain(rt)
    refused = rng.random() < 0.15
    f = _flow(rt, "evil.example.com" if refused else HOST)
    if rng.random() < 0.1:
        f.request.path = "/v1/x?secret=vpcanary_00&a=b"
    fire(chain, HttpRequestHeadersHook(f), HttpRequestHook(f))
    record_of(f).t0 = 1000.0 - rng.choice([0.0, 0.0005, 0.0123, 1.5, 30.0])
    if f.response is None:  # (a refusal answered it)
        status = rng.choice([200, 200, 201, 204, 301, 404, 429, 500, 502, 503])
        f.response = http.Response.make(status, rng.choice([b"", b"ok", b"x" * 300]))
    if rng.random() < 0.1:
        f.error = mflow.Error(rng.choice([mflow.Error.KILLED_MESSAGE, "Client disconnected."]))
    return f, chain


def _written(rt: Runtime, go: Any) -> bytes:
    audit = rt.state().audit
    path = audit.path
    before = path.stat().st_size if path.exists() else 0
    go()
    audit.flush()
    return path.read_bytes()[before:] if path.exists() else b""


def _counters() -> dict[str, float]:
    """``/metrics``' request series (what ``metrics.counted`` counts), by sample (not the
    ``_created`` ones: the wall clock of a series' first count)."""
    got: dict[str, float] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("vaultproxy_") and "_created{" not in line:
            name, _, value = line.rpartition(" ")
            got[name] = float(value)
    return got


def _respond(rt: Runtime, seed: int, deferred: bool,
             clock: dict[str, float] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The bytes the ``response`` hook's record put in the file, the sink's counters and the
    metrics it counted. ``clock``: moved on between the hook and the ``Later``'s run (the
    send's time): the record is still the one made at the hook's instant."""
    rng = random.Random(seed)
    f, chain = _seeded_flow(rt, rng)
    later = aftersend.Later() if deferred else None
    if later is not None:
        f.metadata[aftersend.KEY] = later
    audit = rt.state().audit
    before = _counters()

    def go() -> None:
        fire(chain[4:], HttpResponseHook(f))  # ResponseGate, Record, Deadline
        if later is not None:
            # not yet written: the line waits for the send; for an AuditLog itself only
            # the values and the clock it is made of (no line, no record object), for any
            # other sink the record
            audit = rt.state().audit
            if record_of(f).decision is not None:
                if type(audit) is AuditLog:
                    # (an injected flow's: its forward line's texts and the rest, ``ahead``)
                    kept = [later.taken, later.ahead]
                    assert sorted(type(k).__name__ for k in kept) == ["NoneType", "tuple"]
                    assert later.log is audit
                    assert later.event is None and later.line is None
                else:
                    assert type(later.event) is audit_event.RequestEvent
                    assert later.sink is audit and later.line is None
                    assert later.taken is None and later.ahead is None
            if clock is not None:  # the send takes its time
                clock["wall"] += rng.choice([0.0004, 0.0011, 0.5, 1.0])
                clock["mono"] += rng.choice([0.0004, 0.0011, 0.5, 1.0])
            later.run(f)
            assert aftersend.KEY not in f.metadata
            assert later.line is None and later.event is None  # emptied for the next
            assert later.taken is None and later.ahead is None

    data = _written(rt, go)
    stats = audit.stats()
    after = _counters()
    # (a ``_sum``'s delta to 9 places: the float sums run on from different totals)
    counted = {k: round(v - before.get(k, 0.0), 9) for k, v in after.items()
               if v != before.get(k, 0.0)}
    return data, {**{k: stats[k] for k in ("failed", "dropped", "pending", "healthy")},
                  "metrics": counted}


@pytest.fixture
def sink_kind(request: pytest.FixtureRequest, world: Any) -> Iterator[str]:  # noqa: F811
    rt = world[0]
    st = rt.state()
    original = st.audit
    if request.param == "subclass":
        st.audit = _Sub(original.path)
    yield request.param
    st.audit.close()
    st.audit = original


@pytest.mark.parametrize("sink_kind", ["auditlog", "subclass"], indirect=True)
@pytest.mark.parametrize("seed", range(60))
def test_a_record_after_the_send_is_the_one_written_before(
        world: Any, clock: dict[str, float], sink_kind: str, seed: int) -> None:  # noqa: F811
    rt = world[0]
    start = dict(clock)
    now, now_stats = _respond(rt, seed, deferred=False)
    clock.update(start)
    later, later_stats = _respond(rt, seed, deferred=True, clock=clock)
    assert later == now
    assert later_stats == now_stats
    assert now.count(b"\n") == 1 and b'"event":"request"' in now  # exactly one record
    if sink_kind == "auditlog" and b'"service":"svc"' in now:
        assert now_stats["metrics"]  # (counted: the comparison above compares something)


def test_the_seeded_flows_reach_each_outcome(world: Any, clock: dict[str, float]) -> None:  # noqa: F811
    """Twin: the seeds above make denied, injected records, several statuses."""
    rt = world[0]
    seen = set()
    for seed in range(60):
        data, _ = _respond(rt, seed, deferred=True)
        for word in (b'"denied"', b'"injected"', b'"status":200', b'"status":502',
                     b'"status":421'):
            if word in data:
                seen.add(word)
    assert len(seen) == 5, seen


@pytest.mark.parametrize("policy", ["deny", "continue"])
def test_a_write_that_fails_keeps_the_record_as_before(
        world: Any, clock: dict[str, float], policy: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = world[0]
    audit = rt.state().audit
    monkeypatch.setattr(audit, "on_failure", policy)
    results = []
    for deferred in (False, True):
        rng = random.Random(7)
        f, chain = _seeded_flow(rt, rng)
        status = f.response.status_code if f.response else None
        later = aftersend.Later() if deferred else None
        if later is not None:
            f.metadata[aftersend.KEY] = later

        def fail(data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        real = audit._file.write_line
        monkeypatch.setattr(audit._file, "write_line", fail)
        fire(chain[4:], HttpResponseHook(f))
        if later is not None:
            later.run(f)
        kept = audit.buffered
        healthy = audit.healthy
        monkeypatch.setattr(audit._file, "write_line", real)
        # never refused: the agent's answer is the upstream's
        assert f.response is not None and f.response.status_code == status
        data = _written(rt, audit.flush)
        results.append((kept, healthy, data))
    assert results[0] == results[1]
    kept, healthy, data = results[1]
    assert kept == 1 and not healthy and data.count(b"\n") == 1


def test_a_sink_that_raises_is_logged_and_the_later_runs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[object] = []

    class Raising:
        counts_metrics = True

        def record(self, event: object) -> bool:
            calls.append(event)
            raise RuntimeError("sink down")

    class RaisingLog:
        def _write(self, line: str, keep: bool) -> bool:
            calls.append((line, keep))
            raise RuntimeError("log down")

    f = SimpleNamespace(metadata={})
    later = f.metadata[aftersend.KEY] = aftersend.Later()
    _hold(later, Raising(), ("an", "event"))
    with caplog.at_level("ERROR"):
        later.run(f)  # never raises
        later.run(f)  # closed: nothing twice
    later.log, later.line = RaisingLog(), "a line"
    with caplog.at_level("ERROR"):
        later.run(f)
        later.run(f)
    assert calls == [("an", "event"), ("a line", True)]
    assert aftersend.KEY not in f.metadata
    assert "RuntimeError" in caplog.text and "down" not in caplog.text


def test_a_second_record_sends_the_first_on(tmp_path: Any) -> None:
    """(Never: one record per flow.) Nothing is lost if it happened: ``decision_record``
    writes what the ``Later`` holds before it holds the next."""
    got: list[object] = []
    sink = SimpleNamespace(counts_metrics=False, record=got.append)
    later = aftersend.Later()
    for n in range(2):
        canonical.decision_record(sink, "request", None, "svc", None, "GET", HOST,
                                  f"/{n}", 200, None, "forwarded", None, None, later)
    assert [e.path for e in got] == ["/0"]  # type: ignore[attr-defined]
    later.run(SimpleNamespace(metadata={}))
    assert [e.path for e in got] == ["/0", "/1"]  # type: ignore[attr-defined]
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(2):
        canonical.decision_record(log, "request", None, "svc", None, "GET", HOST,
                                  f"/{n}", 200, None, "forwarded", None, None, later)
    assert later.taken is not None and later.taken[7] == "/1" and later.line is None
    later.run(None)
    log.flush()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert ['"path":"/0"' in lines[0], '"path":"/1"' in lines[1]] == [True, True]
    log.close()


def _hold(later: aftersend.Later, sink: Any, event: object) -> None:
    """What ``decision_record`` leaves in a ``Later`` for a sink other than an AuditLog."""
    later.sink, later.event = sink, event


# --- the layer: when the record goes out ------------------------------------------------


class _Probe:
    """The audit sink of one side's records: each with the commands the layer had yielded
    when it arrived."""

    counts_metrics = True

    def __init__(self) -> None:
        self.out: list[tuple[Any, ...]] = []
        self.got: list[tuple[str, int, tuple[Any, ...] | None]] = []

    def record(self, event: Any) -> bool:
        self.got.append((event, len(self.out), self.out[-1] if self.out else None))
        return True


def _feed(side: _Side, probe: _Probe, event: events.Event) -> list[tuple[Any, ...]]:
    from tests.unit.test_lean_events import _norm

    got = []
    for cmd in side.layer.handle_event(event):
        if isinstance(cmd, lean.LeanHook):
            side.hooks.append(cmd)
            side.flows.append(cmd.flow)
        norm = _norm(cmd, side.ctx)
        got.append(norm)
        probe.out.append(norm)
    return got


def _open(hook: lean.LeanHook, probe: _Probe) -> None:
    """What the job and the Record stage leave when the response hook ran: the layer's one
    ``Later`` holding the flow's record (the flow's id as the record)."""
    job = hook.job
    if job.outcome in (lean.SEND, lean.KILL, lean.ERROR):
        layer = job.lean
        assert layer is not None
        later = job.later = hook.flow.metadata[aftersend.KEY] = layer.later  # (the task's)
        assert later.event is None and later.line is None  # emptied by the last request
        _hold(later, probe, hook.flow.id)


def _layer_script(seed: int) -> tuple[_Side, _Probe, list[tuple[Any, ...]], list[Any]]:
    rng = random.Random(seed)
    plain, deferred = _Side(lean.LeanLayer), _Side(lean.LeanLayer)
    probe, none = _Probe(), _Probe()
    data = _stream(rng)
    outs: list[tuple[Any, ...]] = []
    sinks = []
    for _ in range(40):
        paused = deferred.layer._paused
        roll = rng.random()
        if paused is not None and roll < 0.55:
            seed2 = rng.random()
            hook_events = []
            for side in (plain, deferred):
                hook = side.layer._paused.command  # type: ignore[union-attr]
                if isinstance(hook, lean.LeanHook):
                    _complete(hook, random.Random(seed2))
                    if side is deferred:
                        _open(hook, probe)
                        if hook.job.later is not None:
                            sinks.append(hook)
                hook_events.append(events.HookCompleted(hook))  # type: ignore[arg-type]
            got = [_feed(side, p, ev) for side, p, ev in
                   zip((plain, deferred), (none, probe), hook_events, strict=True)]
        elif data and roll < 0.93:
            cut = rng.randint(1, len(data))
            piece, data = data[:cut], data[cut:]
            got = [_feed(side, p, events.DataReceived(side.ctx.client, piece))
                   for side, p in ((plain, none), (deferred, probe))]
        else:
            got = [_feed(side, p, events.ConnectionClosed(side.ctx.client))
                   for side, p in ((plain, none), (deferred, probe))]
        assert got[0] == got[1]  # the same commands: a Later changes nothing on the wire
        outs.extend(got[1])
        if not data and deferred.layer._paused is None and rng.random() < 0.3:
            data = _stream(rng)
    return deferred, probe, outs, sinks


@pytest.mark.parametrize("seed", range(150))
def test_the_layer_writes_the_record_right_after_the_send(seed: int) -> None:
    side, probe, outs, hooks = _layer_script(seed)
    written = {rec: (at, last) for rec, at, last in probe.got}
    assert len(written) == len(probe.got)  # once per flow
    for hook in hooks:
        flow = hook.flow
        if side.layer._paused is not None and side.layer._paused.command is hook:
            continue  # (not completed yet)
        assert flow.id in written, hook.job.outcome  # never lost
        assert aftersend.KEY not in flow.metadata  # closed
        at, last = written[flow.id]
        if hook.job.outcome == lean.SEND:
            # right after the response's one write, before anything else
            assert last is not None and last[0] == "send" and last[1] == "client"
            assert last[2].startswith(b"HTTP/1.1 ") or last[2].startswith(b"HTTP/")
        else:
            # no response of the upstream's went out: at once, before the close/answer
            assert last is None or last[0] != "send" or not last[2].startswith(b"HTTP/1.1 2")


def test_the_layer_streams_reach_each_outcome() -> None:
    """Twin: the streams above write records after sends, kills and errors."""
    outcomes: set[str] = set()
    for seed in range(150):
        side, probe, _, hooks = _layer_script(seed)
        done = {rec for rec, _, _ in probe.got}
        outcomes.update(h.job.outcome for h in hooks if h.flow.id in done)
    assert {lean.SEND, lean.KILL, lean.ERROR} <= outcomes, outcomes


# --- the hook task: what the layer never got to ----------------------------------------


def test_the_hook_task_writes_a_record_the_layer_never_got_to() -> None:
    """``server_event`` cancelled (the connection went away): the task hands the record over
    as it ends; a normal end leaves nothing for it (the layer ran the ``Later``)."""
    got: list[object] = []
    sink = SimpleNamespace(counts_metrics=True, record=got.append)

    async def handle_hook(self: Any, hook: Any) -> None:  # (only its identity matters)
        raise AssertionError

    task_fn = lean._lean_hook_task(handle_hook)

    class Handler:
        pass

    Handler.handle_hook = handle_hook  # type: ignore[attr-defined]

    class Job(lean._Job):
        async def _request(self) -> str:
            later = self.later  # the layer's, given by the hook task
            assert later is not None and later is self.lean.later  # type: ignore[union-attr]
            self.flow.metadata[aftersend.KEY] = later
            _hold(later, sink, "the record")
            return lean.SEND

    async def cancelled_event(event: Any) -> None:
        raise asyncio.CancelledError

    async def main(server_event: Any) -> Any:
        side = _Side(lean.LeanLayer)
        flow = http.HTTPFlow(side.ctx.client, side.ctx.server)
        hook = lean.LeanHook(flow)
        layer = lean.LeanLayer.__new__(lean.LeanLayer)
        layer.route = False  # (no bypass route)
        layer.later = aftersend.Later()
        layer.agent_stream = layer.watchdog = layer.watch_can = None  # (none found yet)
        hook.job = Job(flow, layer)
        handler = Handler()
        handler.timeout_watchdog = SimpleNamespace(disarm=_Disarm)  # type: ignore[attr-defined]
        handler.master = SimpleNamespace(addons=None)  # type: ignore[attr-defined]
        handler.transports = {}  # type: ignore[attr-defined]
        handler.client = None  # type: ignore[attr-defined]
        handler.server_event = server_event  # type: ignore[attr-defined]
        try:
            await task_fn(handler, hook)
        except asyncio.CancelledError:
            pass
        return flow

    flow = asyncio.run(main(cancelled_event))
    assert got == ["the record"] and aftersend.KEY not in flow.metadata
    assert flow.metadata == {}

    async def ran_by_the_layer(event: Any) -> None:
        job = event.command.job
        job.later.run(job.flow)  # (what the layer does after the send)

    got.clear()
    asyncio.run(main(ran_by_the_layer))
    assert got == ["the record"]  # once


class _Disarm:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the job: where the Later is opened ---------------------------------------------------


def _job_run(seed: int, with_later: bool) -> tuple[Any, ...]:
    """test_lean_job.py's seeded stage behaviours through the real job, with the layer's
    ``Later`` handed to it (as the hook task does) or not; at each hook, whether the flow's
    ``Later`` was open (``KEY`` in its metadata, and the job's)."""
    from tests.unit.test_lean_job import _Addons, _Lean, _state

    rng = random.Random(seed)
    flow = tflow_flow()
    flow.live = True
    flow.request.method = rng.choice(["GET", "GET", "HEAD", "POST"])
    layer = _Lean(flow.client_conn, rng.random() < 0.8) if rng.random() < 0.9 else None
    job = lean._Job(flow, layer)  # type: ignore[arg-type]
    later = aftersend.Later() if with_later else None
    job.later = later
    addons = _Addons(seed, layer)
    opened: list[tuple[str, bool]] = []
    inner = addons.handle_lifecycle

    async def handle_lifecycle(hook: Any) -> None:
        got = flow.metadata.get(aftersend.KEY)
        assert got is None or got is later
        opened.append((hook.name, got is not None))
        await inner(hook)

    addons.handle_lifecycle = handle_lifecycle  # type: ignore[method-assign]
    asyncio.run(job.run(addons))
    return _state(job, addons), opened, job.outcome, flow.response is not None


@pytest.mark.parametrize("seed", range(200))
def test_the_job_opens_the_later_for_the_response_hook_only(seed: int) -> None:
    """The job opens its ``Later`` right before the ``response`` hook (of an upstream's
    response or a stage's own), never for another hook; without one the same calls and
    state (test_lean_job.py's comparison, with and without)."""
    state, opened, outcome, _ = _job_run(seed, True)
    plain, closed, _, _ = _job_run(seed, False)
    assert state == plain
    assert not any(was for _, was in closed)
    for name, was in opened:
        assert was == (name == "response"), (name, opened)


def test_the_job_opens_the_later_on_each_path() -> None:
    """Twin: the seeds above open it for sent responses, kills after the hook, and a
    stage's own answer; a streamed response's hook (the layer's) never sees it."""
    from vaultproxy.seam.pool import PoolExchangeHook

    seen = set()
    for seed in range(200):
        _, opened, outcome, _ = _job_run(seed, True)
        if ("response", True) in opened:
            seen.add(outcome)
            if not any(name == PoolExchangeHook.name for name, _ in opened):
                seen.add("a stage's answer")
    assert {lean.SEND, lean.KILL, "a stage's answer"} <= seen, seen


def tflow_flow() -> http.HTTPFlow:
    from mitmproxy.test import tflow

    return tflow.tflow()
