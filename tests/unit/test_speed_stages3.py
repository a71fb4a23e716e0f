"""The hook phases' per-request shortcuts of session 12 (``stages3``) answer exactly as the
code they replace, on seeded input; the code before each shortcut is kept here as the
reference.

* ``pipeline.check_headers``: the names read through ``header_names`` (lower-cased) and the
  verdict of a names tuple equal to the last one found to be tokens reused, against the
  all-at-once check over the raw names (and its field-by-field loop), with the same names
  again under other values, names that differ only in case, and every kind of bad field;
* ``prepare_request``: the pieces ``scan_all`` reads by one tuple ``sum`` and the positional
  ``Draft``/``InjectResult``, against the comprehension and keyword form, every auth type,
  both modes, sections short and long, of tuples and of lists;
* the stages that now read ``rt.live.state`` themselves still refuse ``503 not_ready``
  without a home (the negative twin of ``Runtime.state``); ``req.data.headers`` and
  ``resp.data.status_code`` are mitmproxy's ``headers``/``status_code``;
* the dispatch's flow-event loop (a guarded stage's ``None`` ends its step at once) against
  the loop with its ``pending`` slot, over every kind of handler and outcome;
* ``FlowRecord`` without ``__init__`` against the dataclass with one.
Twins: each side of each comparison is reached (memo hits and misses, fast and slow paths).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
import types
from collections.abc import Mapping
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http, master, options
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from vaultproxy.config.models import Service
from vaultproxy.core import pipeline
from vaultproxy.core.decide import Decision, Plan
from vaultproxy.core.pipeline import MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from vaultproxy.core.state import Live
from vaultproxy.errors import InvalidRequest, NotReady, VaultproxyError
from vaultproxy.inject import request as inject_request
from vaultproxy.inject.minted import is_minted
from vaultproxy.inject.names import canonical_names, header_names
from vaultproxy.inject.request import InjectResult, minted_trigger
from vaultproxy.inject.strategy import Draft
from vaultproxy.seam import dispatch
from vaultproxy.secret import Secret
from vaultproxy.stages import Runtime
from vaultproxy.stages.access import request_headers
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import FlowRecord, Refusal, record_of
from vaultproxy.stages.identify import Identify
from vaultproxy.stages.inject import Inject
from vaultproxy.stages.request_gate import RequestGate
from vaultproxy.values.placeholders import PlaceholderIndex

# -- check_headers -------------------------------------------------------------------------

_TOKENS = pipeline._TOKENS
_TOKEN = pipeline._TOKEN
_BAD_VALUE = pipeline._BAD_VALUE


def _check_headers_reference(fields: tuple[tuple[bytes, bytes], ...]) -> None:
    """check_headers before ``stages3`` (the raw names joined and matched on every call)."""
    if len(fields) > MAX_HEADER_FIELDS:
        raise InvalidRequest(f"more than {MAX_HEADER_FIELDS} header fields")
    names = b":".join([name for name, _ in fields])
    values = b"".join([value for _, value in fields])
    if (_TOKENS.match(names) and names.count(b":") == len(fields) - 1
            and not _BAD_VALUE.search(values)):
        if len(names) - len(fields) + 1 + len(values) > MAX_HEADER_BYTES:
            raise InvalidRequest(f"the header section is over {MAX_HEADER_BYTES // 1024} KiB")
        return
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


GOOD_NAMES = [b"Host", b"host", b"HOST", b"Accept", b"X-Api-Key", b"x_api_key",
              b"Content-Length", b"a", b"!#$%&'*+-.^_`|~09azAZ"]
BAD_NAMES = [b"", b"a:b", b"bad name", b"\xc4\xb0d", b"x\r", b"(x)", b"a\x00", b":"]
VALUES = [b"v", b"", b"Bearer x", b"a\r\n b", b"a\nb", b"a\x00b", b"\xff\xfe", b"x" * 100]


def _outcome(fn: Any, fields: Any) -> tuple[str, str] | None:
    try:
        fn(fields)
    except InvalidRequest as e:
        return (type(e).__name__, str(e))
    return None


def _section(rng: random.Random) -> tuple[tuple[bytes, bytes], ...]:
    kind = rng.random()
    n = rng.randint(0, 6)
    if kind < 0.02:
        n = MAX_HEADER_FIELDS + rng.randint(0, 1)
    names = [rng.choice(GOOD_NAMES) if rng.random() < 0.93 else rng.choice(BAD_NAMES)
             for _ in range(n)]
    values = [rng.choice(VALUES[:3]) if rng.random() < 0.93 else rng.choice(VALUES)
              for _ in range(n)]
    if kind > 0.97 and n:  # around the size bound
        values[0] = b"y" * (MAX_HEADER_BYTES - rng.randint(-3, 3) - sum(map(len, names)))
    return tuple(zip(names, values, strict=True))


def test_check_headers_is_the_all_at_once_check_and_its_loop() -> None:
    rng = random.Random(31)
    hits = misses = refused = passed = 0
    last: tuple[tuple[bytes, bytes], ...] = ()
    for _ in range(20000):
        r = rng.random()
        if r < 0.4 and last:
            # the same names again (as an agent sends them), values changed, in a new tuple
            fields = tuple((k, rng.choice(VALUES) if rng.random() < 0.1 else v)
                           for k, v in last)
        elif r < 0.5 and last:
            # the same names in another case: another names tuple? no, the same lower-cased
            fields = tuple((k.swapcase(), v) for k, v in last)
        else:
            fields = _section(rng)
        hit = header_names(fields) == pipeline._names_ok[0]
        want = _outcome(_check_headers_reference, fields)
        got = _outcome(pipeline.check_headers, fields)
        assert got == want, fields[:8]
        # a list section (no names memo of its own) answers the same
        assert _outcome(pipeline.check_headers, [list(f) for f in fields]) == want
        hits += hit
        misses += not hit
        refused += want is not None
        passed += want is None
        last = fields
    assert hits > 3000 and misses > 3000 and refused > 1000 and passed > 3000, (
        hits, misses, refused, passed)


def test_a_bad_name_after_a_good_section_of_the_same_length_is_refused() -> None:
    """The memo is the names' content, not their count or total length."""
    pipeline.check_headers(((b"ab", b"v"), (b"cd", b"v")))
    with pytest.raises(InvalidRequest):
        pipeline.check_headers(((b"ab", b"v"), (b"c:", b"v")))
    with pytest.raises(InvalidRequest):
        pipeline.check_headers(((b"ab", b"v"), (b"c d", b"v")))
    pipeline.check_headers(((b"AB", b"v"), (b"Cd", b"v")))  # the same names, other case


# -- prepare_request -----------------------------------------------------------------------


def _host_inject_reference(draft: Draft, service: Service, value: Secret | None,
                           fields: Mapping[str, Secret], canonical: Any = None
                           ) -> InjectResult:
    inject_request._strip(draft, service, keep_value=None, canonical=canonical)
    inject_request.strategy_for(service).inject(draft, service, value, fields)
    return InjectResult(injected=True, stripped=inject_request._dedup(draft.stripped))


def _prepare_reference(request: http.Request, service: Service, value: Secret | None,
                       fields: Mapping[str, Secret], index: PlaceholderIndex) -> InjectResult:
    """prepare_request before ``stages3``."""
    sent = request.headers.fields
    headers = list(sent)
    path, sep, query = request.data.path.partition(b"?")
    pieces = [x for field in headers for x in field]
    pieces.append(path)
    pieces.append(query)
    index.scan_all(pieces, service.name)

    draft = Draft(headers=headers, path=path, query=query if sep else None)
    names = canonical_names(sent)
    if service.mode == "host_inject" or (
        is_minted(service)
        and minted_trigger(headers, service, index.placeholder_of(service.name))
    ):
        result = _host_inject_reference(draft, service, value, fields, names)
    else:
        result = inject_request._placeholder(draft, service, value, fields, index, names)

    request.headers.fields = tuple(draft.headers)
    request.data.path = draft.target()
    return result


def _services() -> list[Service]:
    out = []
    for mode in ("host_inject", "placeholder"):
        for auth, extra in (("bearer", {}), ("basic", {}),
                            ("header", {"header_name": "X-Api-Key", "prefix": "k "}),
                            ("header", {"header_name": "X_Custom"}),
                            ("query_param", {"param_name": "key"})):
            subs: list[dict[str, Any]] = (
                [{}] if mode == "host_inject" else
                [{"substitute_in": s} for s in (("auth",), ("auth", "header"),
                                                ("header", "query", "path"))])
            for sub in subs:
                out.append(Service(name="svc", hosts=("svc.test",), mode=mode, auth=auth,
                                   **extra, **sub))
    out.append(Service(name="svc", hosts=("svc.test",), mode="host_inject",
                       auth="path_prefix", path_prefix="/k/{secret}"))
    return out


NAMES = [b"Host", b"Accept", b"Authorization", b"authorization", b"X-Api-Key", b"x_api_key",
         b"X_Custom", b"Cookie", b"Proxy-Authorization", b"Accept-Encoding", b"X-Other"]
FIELD_VALUES = [b"v", b"Bearer __vault.svc__", b"__vault.svc__", b"k __vault.svc__",
                b"__vault.other__", b"x%41", b"Basic X192YXVsdC5zdmNfXw==", b""]


def _prepare_outcome(fn: Any, req: http.Request, service: Service, value: Secret,
                     fields: Mapping[str, Secret], index: PlaceholderIndex) -> tuple[object, ...]:
    try:
        result = fn(req, service, value, fields, index)
    except (VaultproxyError, KeyError) as e:
        return (type(e), str(e), req.headers.fields, req.data.path)
    return (result, req.headers.fields, req.data.path)


def test_prepare_request_is_its_keyword_and_comprehension_form() -> None:
    rng = random.Random(37)
    index = PlaceholderIndex({"__vault.svc__": "svc", "__vault.other__": "other"})
    value = Secret(make_canary())
    fields = {"username": Secret("user"), "password": Secret(make_canary())}
    services = _services()
    injected = untouched = refused = long = lists = 0
    for _ in range(6000):
        service = rng.choice(services)
        req = tutils.treq(path=rng.choice([b"/x", b"/x?key=__vault.svc__", b"/__vault.svc__",
                                           b"/x?a=1&key=v", b"/a%2Fb?q=+"]),
                          headers=http.Headers())
        n = rng.randint(0, 6) if rng.random() < 0.95 else rng.randint(23, 30)
        section = [(rng.choice(NAMES), rng.choice(FIELD_VALUES)) for _ in range(n)]
        if rng.random() < 0.05:
            req.headers.fields = [list(f) for f in section]  # type: ignore[assignment]
            lists += 1
        else:
            req.headers.fields = tuple(section)
        long += n > 24
        a, b = req.copy(), req.copy()
        a.headers.fields = req.headers.fields
        b.headers.fields = req.headers.fields
        want = _prepare_outcome(_prepare_reference, a, service, value, fields, index)
        got = _prepare_outcome(inject_request.prepare_request, b, service, value, fields,
                               index)
        assert got == want, (service.mode, service.auth, service.substitute_in, section)
        if isinstance(want[0], InjectResult):
            injected += want[0].injected
            untouched += not want[0].injected
        else:
            refused += 1
    assert injected > 1000 and untouched > 500 and refused > 300, (injected, untouched, refused)
    assert long > 100 and lists > 100, (long, lists)


def test_the_pieces_are_the_comprehensions() -> None:
    rng = random.Random(41)
    for _ in range(3000):
        section = [(rng.choice(NAMES), rng.choice(FIELD_VALUES))
                   for _ in range(rng.choice([0, 1, 3, 24, 25, 40]))]
        path, query = rng.choice([(b"/x", b""), (b"/", b"a=1")])
        want = [x for field in section for x in field] + [path, query]
        for form in (tuple(section), [list(f) for f in section], section):
            assert list(inject_request._pieces(form, path, query)) == want  # type: ignore[arg-type]


# -- rt.state() read inline: still NotReady without a home ---------------------------------


def test_the_inline_state_reads_refuse_without_a_home() -> None:
    rt = Runtime(Live(None))
    service = Service(name="svc", hosts=("svc.test",), mode="host_inject", auth="bearer")
    plan = Plan(service, "stream", 1 << 20)
    for stage_call in (lambda f: Identify(rt).requestheaders(f),
                       lambda f: RequestGate(rt).requestheaders(f),
                       lambda f: Inject(rt).requestheaders(f)):
        f = tflow.tflow()
        rt.connections.open(f.client_conn.id, Tunnel(Decision(service, None, ("svc.test", 443),
                                                              plan=plan,
                                                              target=("svc.test", 443))))
        record_of(f).decision = Decision(service, None, ("svc.test", 443), plan=plan,
                                         target=("svc.test", 443))
        stage_call(f)
        assert f.response is not None and f.response.status_code == 503
        assert record_of(f).refusal is not None and record_of(f).refusal.code == "not_ready"
    f = tflow.tflow()
    record_of(f).decision = Decision(service, None, ("svc.test", 443), plan=plan,
                                     target=("svc.test", 443))
    with pytest.raises(NotReady):
        request_headers(rt, f)


# -- the raw reads -------------------------------------------------------------------------


def test_the_raw_reads_are_the_properties() -> None:
    """``req.data.headers`` for ``req.headers``, ``resp.data.status_code`` for
    ``resp.status_code`` (the stages read the data fields mitmproxy's properties return)."""
    rng = random.Random(53)
    for _ in range(200):
        f = tflow.tflow(resp=True)
        f.response.status_code = rng.choice([200, 204, 401, 599])
        assert f.request.data.headers is f.request.headers
        assert f.response.data.headers is f.response.headers
        assert f.response.data.status_code == f.response.status_code


# -- the dispatch's loop for flow events ---------------------------------------------------

_BEHAVIOURS = ("none", "value", "coro_ok", "coro_raise", "coro_halt", "coro_options", "raise",
               "halt", "options")
_KINDS = ("plain", "guarded", "guarded_awaitable")


def _addon(i: int, kind: str, behaviour: str, log: list[tuple[object, ...]]) -> object:
    async def later() -> None:
        await asyncio.sleep(0)
        log.append(("awaited", i))
        if behaviour == "coro_raise":
            raise ValueError(i)
        if behaviour == "coro_halt":
            raise exceptions.AddonHalt()
        if behaviour == "coro_options":
            raise exceptions.OptionsError(str(i))

    def body(*args: Any) -> Any:
        log.append(("called", i))
        if behaviour == "raise":
            raise ValueError(i)
        if behaviour == "halt":
            raise exceptions.AddonHalt()
        if behaviour == "options":
            raise exceptions.OptionsError(str(i))
        if behaviour == "value":
            return 5
        if behaviour.startswith("coro"):
            return later()
        return None

    def fail(addon: object, args: Any, err: BaseException) -> None:
        log.append(("fail", i, type(err).__name__))

    if kind == "plain":
        def requestheaders(self: object, flow: object) -> Any:
            return body(self, flow)
    else:
        def requestheaders(self: object, flow: object) -> Any:  # the wrapper (not called)
            raise AssertionError("the dispatch calls the body")
        requestheaders.__wrapped__ = body  # type: ignore[attr-defined]
        requestheaders.__vp_guard__ = (  # type: ignore[attr-defined]
            body, fail, kind == "guarded_awaitable")
    return type(f"A{i}", (), {"requestheaders": requestheaders})()


async def _reference_loop(top: Any, arg: Any, log: list[tuple[object, ...]]) -> None:
    """The flow-event loop of ``trigger_event`` before ``stages3`` (``pending``)."""
    for func, addon, fail, guard_awaitable in top:
        try:
            if fail is None:
                res = func(arg)
                if res is not None and (
                        type(res) is types.CoroutineType or inspect.isawaitable(res)):
                    await res
                continue
            pending = None
            try:
                res = func(addon, arg)
                if res is not None and (
                        type(res) is types.CoroutineType or inspect.isawaitable(res)):
                    if guard_awaitable:
                        await res
                    else:
                        pending = res
            except Exception as err:  # noqa: BLE001
                fail(addon, (arg,), err)
            if pending is not None:
                await pending
        except exceptions.AddonHalt:
            break
        except exceptions.OptionsError:
            raise
        except Exception as err:  # noqa: BLE001
            log.append(("error", type(err).__name__))


def test_the_flow_event_loop_is_the_pending_form(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(59)
    log: list[tuple[object, ...]] = []
    monkeypatch.setattr(dispatch, "_addon_error",
                        lambda err: log.append(("error", type(err).__name__)))
    seen: set[tuple[str, str]] = set()

    async def go() -> None:
        for _ in range(600):
            n = rng.randint(1, 5)
            shapes = [(rng.choice(_KINDS), rng.choice(_BEHAVIOURS)) for _ in range(n)]
            seen.update(shapes)
            addons = [_addon(i, k, b, log) for i, (k, b) in enumerate(shapes)]
            m = master.Master(options.Options(), with_termlog=False)
            am = dispatch.IndexedAddonManager(m)
            m.addons = am
            am.add(*addons)
            f = tflow.tflow()
            outcomes = []
            top = am._flat_of(hooks.all_hooks["requestheaders"](f))[1]
            for which in ("indexed", "reference"):
                log.clear()
                try:
                    if which == "indexed":
                        await am.trigger_event(hooks.all_hooks["requestheaders"](f))
                    else:
                        await _reference_loop(top, f, log)
                    raised = None
                except exceptions.OptionsError:
                    raised = "OptionsError"
                outcomes.append((list(log), raised))
            assert outcomes[0] == outcomes[1], shapes
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert len(seen) == len(_KINDS) * len(_BEHAVIOURS)


# -- FlowRecord's __init__ ------------------------------------------------------------

_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset)


def test_a_fresh_flow_record_is_the_dataclass_with_its_init() -> None:
    fields = dataclasses.fields(FlowRecord)
    fresh = FlowRecord()
    for f in fields:  # a plain immutable default, set by ``__init__``, none on the class
        assert f.default_factory is dataclasses.MISSING, f.name
        assert f.default is not dataclasses.MISSING, f.name
        assert isinstance(f.default, _IMMUTABLE), f.name
        assert vars(fresh)[f.name] is f.default, f.name
        assert f.name not in vars(FlowRecord), f.name  # (a shadowed read is not specialised)
    assert list(vars(fresh)) == [f.name for f in fields] + ["answered", "ahead"]
    reference = dataclasses.make_dataclass(
        "FlowRecord", [(f.name, f.type, f.default) for f in fields])
    rng = random.Random(61)
    values: dict[str, list[object]] = {
        "decision": [None, Decision(None, "a")], "path": [None, "/x"], "t0": [None, 1.5],
        "served": [False, True], "hold_body": [False, True], "retried": [False, True],
        "injected": [False, True], "outcome": [None, "denied", "injected"],
    }
    for _ in range(300):
        got, want = FlowRecord(), reference()
        other = FlowRecord()
        for name, choices in values.items():
            if rng.random() < 0.5:
                value = rng.choice(choices)
                if name == "served" and value:
                    got.serve()  # (its one writer: ``answered`` with it; flow4)
                else:
                    setattr(got, name, value)
                setattr(want, name, value)
        if rng.random() < 0.3:
            refusal = Refusal("c", "m")
            got.refuse(refusal)  # (its one writer)
            want.refusal = refusal  # type: ignore[attr-defined]
        for f in fields:
            assert getattr(got, f.name) == getattr(want, f.name), f.name
            assert getattr(other, f.name) is f.default, f.name  # nothing shared
        assert got.answered == (want.refusal is not None or want.served)  # type: ignore[attr-defined]
        assert repr(got) == repr(want)
    f = tflow.tflow()
    assert record_of(f) is record_of(f) and record_of(f) is not record_of(tflow.tflow())
