"""The lean layer's fast tests (seam/lean.py) answer exactly as mitmproxy's functions do, on
seeded random heads: ``closes`` (one pass over the names) against ``closes_general``
(``expected_http_body_size`` + ``connection_close``), which it falls back to for anything
but the common exchange. Twin: the general test itself flips on the fields that matter."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import http

from vaultproxy.seam import headers, lean

VERSIONS = ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/0.9"]
METHODS = ["GET", "HEAD", "POST", "CONNECT", "get"]
STATUSES = [100, 101, 200, 204, 206, 304, 404, 502]
REQ_FIELDS = [
    (b"Host", b"a.test"), (b"Connection", b"close"), (b"connection", b"keep-alive"),
    (b"CONNECTION", b"Keep-Alive, Upgrade"), (b"Connection", b""), (b"Content-Length", b"3"),
    (b"Accept", b"*/*"), (b"Transfer-Encoding", b"chunked"), (b"X-Connection", b"close"),
    (b"Connection", b" close ,x"), (b"Connection", b"\x1cclose\x1f"), (b"connection", b"CLOSE"),
    (b"Connection", b"keep-alive,\xe2\x80\xa8close"), (b"Connection", b"closed"),
]
RESP_FIELDS = [
    (b"Content-Length", b"10"), (b"content-length", b"10"), (b"Content-Length", b"x"),
    (b"Content-Length", b"-1"), (b"Transfer-Encoding", b"chunked"),
    (b"transfer-encoding", b"gzip"), (b"Transfer-Encoding", b"gzip, chunked"),
    (b"Transfer-Encoding", b"bogus"), (b"Transfer-Encoding", b"identity"),
    (b"Connection", b"close"), (b"connection", b"keep-alive"), (b"Connection", b"Close"),
    (b"Server", b"nginx"), (b"Content-Type", b"text/plain"), (b"Keep-Alive", b"timeout=5"),
    (b"Connection", b"Keep-Alive, close"), (b"Connection", b"upgrade,\x1cclose"),
    (b"Connection", b"\xffclose"), (b"connection", b"close\xc2\x85"),
]


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return "raise", type(e)


def _exchange(rng: random.Random) -> tuple[http.Request, http.Response]:
    req = http.Request.make(rng.choice(METHODS), "https://a.test/x",
                            headers=rng.sample(REQ_FIELDS, rng.randint(0, 4)))
    req.http_version = rng.choice(VERSIONS)
    resp = http.Response.make(rng.choice(STATUSES))
    resp.headers = http.Headers(rng.sample(RESP_FIELDS, rng.randint(0, 4)))  # (not make's)
    resp.http_version = rng.choice(VERSIONS)
    return req, resp


@pytest.mark.parametrize("fast_headers", [False, True], ids=["stock headers", "fast headers"])
def test_closes_matches_mitmproxys_test(fast_headers: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """5 000 seeded exchanges, under mitmproxy's header lookups and under ours."""
    if fast_headers:
        assert headers.install()
    else:
        for name, stock in headers.STOCK.items():
            monkeypatch.setattr(http.Headers, name, stock)
    rng = random.Random(29)
    for i in range(5000):
        req, resp = _exchange(rng)
        want = _outcome(lean.closes_general, req, resp)
        got = _outcome(lean.closes, req, resp)
        assert got == want, (i, req.method, req.http_version, req.headers.fields,
                             resp.status_code, resp.http_version, resp.headers.fields)


def test_twin_the_general_test_sees_each_reason() -> None:
    """The comparison above is not vacuous: each reason to close flips the general test
    (and the fast one follows)."""
    def pair(req_fields: list[tuple[bytes, bytes]], resp_fields: list[tuple[bytes, bytes]],
             status: int = 200, version: str = "HTTP/1.1") -> tuple[bool, bool]:
        req = http.Request.make("GET", "https://a.test/x", headers=req_fields)
        resp = http.Response.make(status)
        resp.headers = http.Headers(resp_fields)
        resp.http_version = version
        return lean.closes_general(req, resp), lean.closes(req, resp)

    length = [(b"Content-Length", b"10")]
    assert pair([], length) == (False, False)
    assert pair([(b"Connection", b"close")], length) == (True, True)
    assert pair([], [*length, (b"Connection", b"close")]) == (True, True)
    assert pair([], [*length, (b"Connection", b"keep-alive")]) == (False, False)
    assert pair([], [*length, (b"Connection", b"keep-alive, \x1cclose")]) == (True, True)
    assert pair([], []) == (True, True)  # no length: read to the end
    assert pair([], [(b"Transfer-Encoding", b"gzip")]) == (True, True)
    assert pair([], length, status=101) == (True, True)
    assert pair([], length, version="HTTP/1.0") == (True, True)


PIECES = [b"GET / HTTP/1.1", b"Host: a", b"X: \r", b"", b"\r", b"\n", b"\r\n", b"\n\r",
          b"a\rb", b" folded", b"\x00", b"POST /x HTTP/1.0", b"k:v"]


def _receive_buffer(buf: bytes) -> tuple[list[bytes], int] | None:
    """h11's own: a fresh ReceiveBuffer holding ``buf`` (the lean layer's earlier code)."""
    from h11._receivebuffer import ReceiveBuffer

    rb = ReceiveBuffer()
    rb += buf
    lines = rb.maybe_extract_lines()
    if lines is None:
        return None
    return [bytes(x) for x in lines], len(buf) - len(rb)


def test_head_lines_match_h11s_receive_buffer() -> None:
    """20 000 seeded buffers of line pieces and line ends (CRLF, bare LF, bare CR, blank
    lines first or not): the same lines and head length, or the same "not yet"."""
    rng = random.Random(29)
    seps = [b"\r\n", b"\n", b"\r", b""]
    seen = {"head": 0, "blank": 0, "none": 0}
    for i in range(20000):
        buf = b"".join(rng.choice(PIECES) + rng.choice(seps) for _ in range(rng.randint(0, 8)))
        want = _receive_buffer(buf)
        assert lean.head_lines(bytearray(buf)) == want, (i, buf)
        assert lean.head_lines(buf) == want, (i, buf)
        seen["none" if want is None else "blank" if not want[0] else "head"] += 1
    assert min(seen.values()) > 1000, seen  # every outcome well covered


# --- the request head: fast_head against mitmproxy's reader ------------------------------

HEAD_METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"DELETE", b"PUT", b"CONNECT", b"get",
                b"OPTIONS", b"M" * 40, b"G\tET", b""]
HEAD_TARGETS = [b"/", b"/1k", b"/a?b=c&d=%20", b"*", b"https://a.test/x", b"a.test:443",
                b"/x y", b"/\x7f", "/é".encode(), b"", b"//a", b"/~!$&'()*+,;=:@"]
HEAD_VERSIONS = [b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1",
                                     b"HTTP/11"]
HEAD_FIELDS = [
    b"Host: a.test", b"host:a.test", b"X:  spaced  ", b"X:\t tab\t", b"X:", b"X: ",
    b"Content-Length: 3", b"Content-Length: 03", b"content-length: 0", b"Content-Length: 3",
    b"Content-Length: -1", b"Transfer-Encoding: chunked", b"Connection: keep-alive",
    b"Connection: Keep-Alive , keep-alive", b"Connection: close", b"Expect: 100-continue",
    b"TE: trailers", b"Upgrade: websocket", b"Bad Name: v", b"X: a\x00b", b"X: v\x0b",
    b" folded", b"\tfolded", "X: é".encode(), b"X: \x7f", b":novalue", b"X:a:b",
    b"Authorization: Bearer vp-placeholder", b"User-Agent: hey/0.0.1", b"X-\xff: v",
    b"Accept: */*", b"X: \xff\xfe", b"X:\x0c", b"X: a\rb",
]


def _random_head(rng: random.Random) -> bytes:
    """Half of them of the common kind (a few pieces odd), half anything."""
    common = rng.random() < 0.5
    nl = b"\r\n" if rng.random() < 0.9 else rng.choice([b"\n", b"\r\n", b" \r\n"])
    n = 6 if common else None
    line = b" ".join([rng.choice(HEAD_METHODS[:n]), rng.choice(HEAD_TARGETS[:n and 4]),
                      rng.choice(HEAD_VERSIONS[:n and 5])])
    fields = rng.sample(HEAD_FIELDS, rng.randint(0, 6)) if not common else (
        rng.sample(HEAD_FIELDS[:14] + HEAD_FIELDS[27:29], rng.randint(0, 4)))
    head = line + nl + b"".join(f + (b"\r\n" if rng.random() < 0.95 else nl) for f in fields)
    head += b"\r\n"
    if rng.random() < 0.3:
        head += b"abc" + b"GET / HTTP/1.1\r\n\r\n" * rng.randint(0, 1)  # a body, a next one
    if rng.random() < 0.1:
        head = head[:rng.randint(0, len(head))]  # not all of it yet
    return head


def _state(req: http.Request) -> dict[str, Any]:
    state = req.get_state()
    del state["timestamp_start"]
    return state


def _types(req: http.Request) -> list[Any]:
    data = vars(req.data)
    return [(k, type(v)) for k, v in data.items()] + [
        (type(req.data.headers), type(req.headers.fields))] + [
        (type(f), type(f[0]), type(f[1])) for f in req.headers.fields]


class _Ctx:
    def __init__(self, validate: bool) -> None:
        self.layers: list[Any] = []
        self.options = type("Options", (), {"validate_inbound_headers": validate})()


def _take_outcome(buf: bytes, validate: bool) -> tuple[Any, ...]:
    layer = lean.LeanLayer(_Ctx(validate), lambda: True, max_body=1024)
    layer.buf += buf
    taken = layer._take()
    pending = layer.pending
    return (_state(taken) if isinstance(taken, http.Request) else taken,
            _types(taken) if isinstance(taken, http.Request) else None,
            bytes(layer.buf),
            pending and (_state(pending[0]), pending[1], pending[2]))


def test_fast_head_makes_what_mitmproxys_reader_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 000 seeded heads (common ones and each odd shape): wherever ``fast_head`` takes a
    head, mitmproxy's reader makes a Request of the same state and types, of the same length;
    and the lean layer's ``_take`` (what it serves, refuses or hands on, with why, and what
    it leaves in its buffer) is the same with the fast path and without, validation on or
    off."""
    rng = random.Random(29)
    heads = [_random_head(rng) for _ in range(3000)]
    taken = 0
    for i, buf in enumerate(heads):
        fast = lean.fast_head(buf)
        if fast is not None:
            taken += 1
            general = lean.general_head(buf)
            assert isinstance(general, tuple), (i, buf)
            assert (_state(fast[0]), _types(fast[0]), fast[1]) == (
                _state(general[0]), _types(general[0]), general[1]), (i, buf)
    got = [_take_outcome(buf, validate) for buf in heads for validate in (True, False)]
    monkeypatch.setattr(lean, "fast_head", lambda _buf: None)
    want = [_take_outcome(buf, validate) for buf in heads for validate in (True, False)]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (i // 2, heads[i // 2])
    assert taken > 800 and len(heads) - taken > 800, taken


# fast_head's field reader before the split and partition, verbatim (seam/lean.py)
_FAST_FIELD = re.compile(
    rb"(" + lean._TOKEN + rb"):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*"
    rb"[\x21-\x7e\x80-\xff])?)?)[ \t]*\r\n")

FIELD_PIECES = [b" ", b"\t", b":", b"::", b" : ", b"a", b"\x80", b"\xff", b"\x7e", b"\x7f",
                b"\x00", b"\x01", b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\t", b"\r\nX:",
                b"\r\nHost:", b"Host", b"-", b"\"", b"=", b"  \t ", b"\x0b", b"\x0c"]


def test_fast_head_fields_are_what_the_field_pattern_read() -> None:
    """30 000 seeded field blocks (tabs and spaces around values, empty values, colons in
    values, duplicate names, 8-bit bytes, and the hostile bytes ``_FAST_HEAD`` refuses: NUL,
    DEL, bare CR or LF, obs-fold, VT, FF; some long): wherever ``_FAST_HEAD`` takes the head,
    ``fast_head``'s fields are exactly ``_FAST_FIELD.findall``'s (kept above), of the same
    types; and a head it refuses is refused."""
    rng = random.Random(0x62F)
    bases = [b"Host: a.test\r\n", b"X:\r\n", b"X: v\r\n", b"X:\t v \t\r\n", b"A: b: c\r\n",
             b"Date: Mon, 07 Dec 2026 10:00:00 GMT\r\n", b"X:  \r\n", b"X: a  b\r\n"]
    taken = refused = 0
    for i in range(30000):
        block = bytearray(b"".join(rng.choices(bases, k=rng.randint(0, 8))))
        for _ in range(rng.randint(0, 4)):
            at = rng.randrange(len(block) + 1)
            if rng.random() < 0.7:
                block[at:at] = rng.choice(FIELD_PIECES) * (200 if rng.random() < 0.01 else 1)
            else:
                del block[at:at + rng.randint(1, 3)]
        head = b"GET /x HTTP/1.1\r\n" + bytes(block) + b"\r\n"
        m = lean._FAST_HEAD.match(head)
        got = lean.fast_head(bytearray(head) if i % 2 else head)
        if m is None:
            assert got is None, head
            refused += 1
            continue
        assert got is not None, head
        want = tuple(_FAST_FIELD.findall(m.group(3)))
        assert got[0].headers.fields == want, head
        assert all(type(n) is bytes and type(v) is bytes for n, v in got[0].headers.fields)
        assert type(got[0].headers.fields) is tuple
        taken += 1
    assert taken > 8000 and refused > 8000, (taken, refused)


def test_twin_fast_head_differs_where_it_must_not() -> None:
    """The comparison above is not vacuous: the reader's result differs for each thing the
    fast path must get right (the value's spaces, the method, the path, a field)."""
    base = b"GET /x HTTP/1.1\r\nHost: a\r\nX: \t v \r\n\r\n"
    got = lean.fast_head(base)
    assert got is not None and got[1] == len(base)
    assert got[0].headers.fields == ((b"Host", b"a"), (b"X", b"v"))
    assert (got[0].method, got[0].path, got[0].http_version) == ("GET", "/x", "HTTP/1.1")
    for other in (b"GET /x HTTP/1.1\r\nHost: a\r\nX: \t v w\r\n\r\n",
                  b"PUT /x HTTP/1.1\r\nHost: a\r\nX: v\r\n\r\n",
                  b"GET /y HTTP/1.1\r\nHost: a\r\nX: v\r\n\r\n",
                  b"GET /x HTTP/1.1\r\nHost: b\r\nX: v\r\n\r\n"):
        general = lean.general_head(other)
        assert isinstance(general, tuple) and _state(general[0]) != _state(got[0])
    for refused in (b"GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n", b"GET /x HTTP/1.1\n\n",
                    b"GET http://a/x HTTP/1.1\r\n\r\n", b"GET /x HTTP/1.1\r\n folded\r\n\r\n"):
        assert lean.fast_head(refused) is None


# --- the hook task: the watchdog's disarm and the writer's drain -------------------------


def _watchdog_script(seed: int, inline: bool) -> list[tuple[bool, int, bool]]:
    """Jobs started and ended in a seeded order (some raising), each under
    ``run_disarmed``; the watchdog's state after each step."""
    from mitmproxy.proxy import server

    async def main() -> list[tuple[bool, int, bool]]:
        rng = random.Random(seed)
        wd = server.TimeoutWatchdog(60, lambda: asyncio.sleep(0))
        gates: list[asyncio.Future[None]] = []
        tasks: list[asyncio.Task[None]] = []
        seen = []

        async def job(gate: asyncio.Future[None]) -> None:
            await gate

        async def disarmed(gate: asyncio.Future[None]) -> None:
            try:
                await lean.run_disarmed(wd, job(gate))
            except ValueError:
                pass

        for _ in range(rng.randint(1, 6)):
            if gates and rng.random() < 0.5:
                gate = gates.pop(rng.randrange(len(gates)))
                if rng.random() < 0.3:
                    gate.set_exception(ValueError("a failed job"))
                else:
                    gate.set_result(None)
            else:
                gate = asyncio.get_running_loop().create_future()
                gates.append(gate)
                tasks.append(asyncio.create_task(disarmed(gate)))
            wd.last_activity = 0.0
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append((wd.can_timeout.is_set(), wd.blocker, wd.last_activity > 0))
        for gate in gates:
            gate.set_result(None)
        await asyncio.gather(*tasks)
        seen.append((wd.can_timeout.is_set(), wd.blocker, wd.last_activity > 0))
        return seen

    from mitmproxy.proxy import server as mserver
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lean, "_Watchdog", mserver.TimeoutWatchdog if inline else None)
        return asyncio.run(main())


def test_run_disarmed_leaves_the_watchdog_as_disarm_does() -> None:
    """300 seeded scripts of overlapping jobs, some failing: the watchdog's state (armed,
    blockers, activity registered) after each step is the same with ``disarm()``'s body
    inline as with ``disarm()`` itself."""
    for seed in range(300):
        assert _watchdog_script(seed, inline=True) == _watchdog_script(seed, inline=False), seed


def test_twin_run_disarmed_sees_a_broken_inline() -> None:
    """The comparison above is not vacuous: an inline body that forgets to re-arm differs."""
    from mitmproxy.proxy import server

    class Forgetful(server.TimeoutWatchdog):
        def register_activity(self) -> None:
            pass  # (an inline body that skipped the activity would look like this)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lean, "_Watchdog", Forgetful)

        async def main() -> bool:
            wd = Forgetful(60, lambda: asyncio.sleep(0))
            wd.last_activity = 0.0
            await lean.run_disarmed(wd, asyncio.sleep(0))
            return wd.last_activity > 0

        assert asyncio.run(main()) is False
    assert _watchdog_script(7, inline=False)[-1] == (True, 0, True)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_drained_only_when_drain_would_not_wait(loop: str) -> None:
    """A real socket pair: ``_to_drain`` gives no writer only where ``StreamWriter.drain()``
    returns on its first step (nothing buffered, open); while the peer reads nothing and the buffer
    is over its limit (paused), and once closed, it says False and drain waits or raises."""
    import socket

    async def main() -> list[tuple[str, bool, str]]:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _reader, writer = await asyncio.open_connection(sock=a)
        writer.transport.set_write_buffer_limits(high=8192)
        peer_reader, peer_writer = await asyncio.open_connection(sock=b)
        seen = []

        def step(name: str) -> None:
            coro = writer.drain()
            try:
                coro.send(None)
                outcome = "waits"
            except StopIteration:
                outcome = "returns"
            except OSError:
                outcome = "raises"
            coro.close()
            handler = SimpleNamespace(client="c", transports={"c": SimpleNamespace(
                writer=writer)})
            to_drain = lean._to_drain(handler, None)
            assert to_drain is None or to_drain is writer
            seen.append((name, to_drain is None, outcome))

        step("fresh")
        writer.write(b"x" * 1024 * 1024)
        step("peer reads nothing")
        got = 0
        while got < 1024 * 1024:
            got += len(await peer_reader.read(65536))
        await asyncio.sleep(0.05)
        step("peer read it all")
        writer.close()
        step("closed")
        peer_writer.close()
        return seen

    if loop == "uvloop":
        import uvloop

        seen = uvloop.run(main())
    else:
        seen = asyncio.run(main())
    for name, drained, outcome in seen:
        assert not drained or outcome == "returns", (name, drained, outcome)
    assert [s[1] for s in seen] == [True, False, True, False], seen
    assert seen[1][2] == "waits", seen


def test_to_drain_without_a_writer_is_none() -> None:
    """The agent's connection gone from the handler (or its writer not set): nothing to
    drain, as ``handle_hook`` had it."""
    gone = SimpleNamespace(client="c", transports={})
    unset = SimpleNamespace(client="c", transports={"c": SimpleNamespace(writer=None)})
    assert lean._to_drain(gone, None) is None and lean._to_drain(unset, None) is None
    other = SimpleNamespace()
    assert lean._to_drain(SimpleNamespace(client="c", transports={"c": SimpleNamespace(
        writer=other)}), None) is other  # (not an asyncio StreamWriter: drain() it)


# --- the response: check_headers and _head against mitmproxy's functions ------------------

CHECK_FIELDS = [
    (b"Content-Length", b"1024"), (b"content-length", b"1024"), (b"Content-Length", b"01"),
    (b"Content-Length", b"x"), (b"Content-Length", b""), (b"Transfer-Encoding", b"chunked"),
    (b"transfer-encoding", b"gzip"), (b"Transfer-Encoding", b"bogus"), (b"Server", b"nginx"),
    (b"Connection", b"keep-alive"), (b"ETag", b'"x"'), (b"Bad Name", b"v"), (b"", b"v"),
    (b"X\n", b"v"), (b"X:", b"v"), (b"X\xff", b"v"), (b"a b c", b"v"), (b" ", b"v"),
    (b"Content-Length ", b"5"), (b"Date", b"Mon, 07 Dec 2026 00:00:00 GMT"),
]


def _random_response(rng: random.Random) -> http.Response:
    common = rng.random() < 0.5
    pool = [f for f in CHECK_FIELDS if f[0].isalpha() or f[0].startswith(b"C")][:12] \
        if common else CHECK_FIELDS
    resp = http.Response.make(rng.choice(STATUSES))
    resp.headers = http.Headers(rng.sample(pool, rng.randint(0, 5)))
    resp.http_version = rng.choice(VERSIONS + ["HTTP/3"])
    resp.reason = rng.choice([b"OK", b"", b"Not Found", b"\xffx"])
    return resp


def test_check_headers_matches_validate_headers() -> None:
    """5 000 seeded response heads: ``check_headers`` passes exactly those
    ``validate_headers`` passes, and raises the same message for the others."""
    from mitmproxy.net.http.validate import validate_headers

    rng = random.Random(29)
    passed = refused = 0
    for i in range(5000):
        resp = _random_response(rng)
        want = _outcome_text(validate_headers, resp)
        assert _outcome_text(lean.check_headers, resp) == want, (i, resp.headers.fields)
        passed += want == ("ok", None)
        refused += want != ("ok", None)
    assert passed > 1000 and refused > 1000, (passed, refused)


def _outcome_text(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return "raise", (type(e), str(e))


def test_twin_check_headers_refuses_what_it_must() -> None:
    """The comparison is not vacuous: a name with a space (two tokens once joined), two
    Content-Lengths and a bad one are refused."""
    for fields in ([(b"a b", b"v")], [(b"Content-Length", b"1"), (b"content-length", b"1")],
                   [(b"Content-Length", b"-1")], [(b"X", b"1"), (b"", b"2")], [(b"", b"v")]):
        resp = http.Response.make(200)
        resp.headers = http.Headers(fields)
        with pytest.raises(ValueError):
            lean.check_headers(resp)


def reference_check_headers(message: http.Message) -> None:
    """``check_headers`` before ``_CHECKED`` and the length's digit test, verbatim."""
    from mitmproxy.net.http.validate import parse_content_length, validate_headers

    fields = message.data.headers.fields
    if not fields:
        return  # (nothing to refuse)
    joined = b" ".join([k for k, _ in fields])
    names = joined.lower().split(b" ")
    if (len(names) == len(fields) and b"transfer-encoding" not in names
            and lean._TOKENS.fullmatch(joined)):
        count = names.count(b"content-length")
        if count == 0:
            return
        if count == 1:
            parse_content_length(fields[names.index(b"content-length")][1])
            return
    validate_headers(message)


LENGTHS = [b"0", b"00", b"01", b"1", b"10", b"1024", b"007", b"+1", b"-1", b" 1", b"1 ",
           b"1\n", b"1\r", b"\t1", b"", b"1,1", b"1, 1", b"1_0", b"0x10", "\u0661".encode(),
           b"\xd9\xa1", b"9" * 40, b"1" * 19, b"\x00", b"1\x00", b"12a", b"\xff"]
NAMES = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-Length ",
         b" Content-Length", b"Content-Length:", b"Content-Lengths", b"Transfer-Encoding",
         b"transfer-encoding", b"X", b"Server", b"a b", b"", b" ", b"X\n", b"X\x00", b"X\xff",
         b"Set-Cookie", b"Set-Cookie", b"\t", b"X\x7f", b"x" * 3000]


def _hostile_response(rng: random.Random) -> http.Response:
    resp = http.Response.make(rng.choice(STATUSES))
    fields = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(NAMES) if rng.random() < 0.8 else bytes(
            rng.randrange(256) for _ in range(rng.randint(0, 4)))
        value = rng.choice(LENGTHS) if rng.random() < 0.7 else rng.choice(
            [b"chunked", b"gzip", b"identity", b"v", b""])
        fields.append((name, value))
    resp.headers = http.Headers(fields)
    resp.http_version = rng.choice(VERSIONS)
    return resp


def test_check_headers_matches_the_reading_before_names_were_remembered() -> None:
    """20 000 seeded hostile heads (lengths with leading zeros, signs, spaces, a line end,
    non-ASCII digits, two of them; names with spaces, controls, 8-bit bytes, duplicates,
    one too long to remember), each read twice (the second from ``_CHECKED``), and with
    ``_CHECKED`` full: ``check_headers`` passes and raises exactly what the reading before
    it (kept above) and ``validate_headers`` do."""
    from mitmproxy.net.http.validate import validate_headers

    rng = random.Random(0x62C)
    passed = refused = 0
    lean._CHECKED.clear()
    for i in range(20000):
        resp = _hostile_response(rng)
        want = _outcome_text(reference_check_headers, resp)
        assert _outcome_text(validate_headers, resp) == want, (i, resp.headers.fields)
        for _ in range(2):
            assert _outcome_text(lean.check_headers, resp) == want, (i, resp.headers.fields)
        passed += want == ("ok", None)
        refused += want != ("ok", None)
    assert passed > 3000 and refused > 3000, (passed, refused)
    assert 0 < len(lean._CHECKED) <= lean._CHECKED_MAX
    assert all(len(k) <= lean._CHECKED_NAMES_MAX for k in lean._CHECKED)


def test_check_headers_remembers_names_only() -> None:
    """``_CHECKED`` holds the names joined, never a value (a canary as a value or a length
    is nowhere in it)."""
    canary = b"vpcanary_" + bytes(random.Random(1).randbytes(8).hex(), "ascii")
    lean._CHECKED.clear()
    for fields in ([(b"Cookie", canary), (b"Content-Length", b"3")],
                   [(b"Content-Length", canary)], [(b"X", b"1"), (b"Y", canary)]):
        resp = http.Response.make(200)
        resp.headers = http.Headers(fields)
        _outcome_text(lean.check_headers, resp)
    assert lean._CHECKED
    assert all(canary not in k and canary not in repr(v) .encode()
               for k, v in lean._CHECKED.items())


def test_twin_check_headers_digit_test_without_the_leading_zero_rule() -> None:
    """The digit test must refuse a leading zero: "01" goes to ``parse_content_length``,
    which raises."""
    resp = http.Response.make(200)
    resp.headers = http.Headers([(b"Content-Length", b"01")])
    with pytest.raises(ValueError, match="invalid content-length"):
        lean.check_headers(resp)
    resp.headers = http.Headers([(b"Content-Length", "\u0661".encode())])
    with pytest.raises(ValueError, match="invalid content-length"):
        lean.check_headers(resp)


def test_head_bytes_match_assemble_response_head() -> None:
    """5 000 seeded responses (versions 1.0 to 3, reasons, fields): ``_head`` sends what
    ``Http1Server`` sends (``assemble_response_head``, HTTP/2 and 3 made HTTP/1.1)."""
    from mitmproxy.net.http import http1, status_codes

    rng = random.Random(29)
    for i in range(5000):
        resp = _random_response(rng)
        stock = resp
        if resp.is_http2 or resp.is_http3:
            stock = resp.copy()
            stock.http_version = "HTTP/1.1"
            stock.reason = status_codes.RESPONSES.get(stock.status_code, "")
        assert lean._head(resp) == bytes(http1.assemble_response_head(stock)), i
