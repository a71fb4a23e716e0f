"""Forms that spare CPython an exception raised and cleared per request or connection
answer exactly as the general forms they replace (seeded: the same cases every run)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import string
from collections.abc import Callable

from vaultproxy.seam import deadlines

_MISSING = object()


def _read(module: object, name: str) -> object:
    try:
        return getattr(module, name)
    except AttributeError:
        return _MISSING


def test_bounded_asyncio_reads_as_asyncio() -> None:
    """``_BoundedAsyncio`` (mitmproxy's server's ``asyncio``) answers every name asyncio
    has, and seeded names it has not, as ``getattr(asyncio, name)`` does (the same object,
    or AttributeError), except its own bounded ``open_connection``; and asyncio's names are
    in its dict (read without the module's AttributeError and ``__getattr__``)."""
    bounded = deadlines._BoundedAsyncio("asyncio")
    rng = random.Random(29)
    names = sorted(set(dir(asyncio)) | {"open_connection", "__file__", "__all__", "__path__"})
    names += ["".join(rng.choice(string.ascii_letters + "_") for _ in range(rng.randint(1, 12)))
              for _ in range(300)]
    missing = 0
    for name in names:
        if name == "open_connection":
            continue
        want = _read(asyncio, name)
        if name in ("__name__", "__doc__", "__dict__", "__class__", "__spec__", "__loader__",
                    "__package__", "__getattr__", "__init__", "__module__"):
            continue  # (the module object's own, before and after)
        assert _read(bounded, name) is want, name
        missing += want is _MISSING
    assert missing > 250  # twin: the misses are asked too
    assert bounded.open_connection is deadlines._BoundedAsyncio.open_connection
    assert bounded.open_connection is not asyncio.open_connection
    assert bounded.__name__ == "asyncio"
    for name in ("Event", "Lock", "Semaphore", "sleep", "wait", "current_task",
                 "CancelledError", "StreamReader", "StreamWriter", "Task", "start_server"):
        assert vars(bounded)[name] is getattr(asyncio, name)  # the fast path is taken


# -- ``holds``/``find`` in place of ``bytes in bytes`` at its call sites -----------------------

_PIECES = [b"", b"a", b"%", b"%41", b"+", b"\\", b"\\u0041", b";", b"=", b":", b"&", b"PH-1",
           b"xPH-1y", b"Basic ", b"\r\n", b"\r\n ", b"\r\n\t", b"\t", b" ", b"caf\xc3\xa9"]


def _joined(rng: random.Random, most: int = 5) -> bytes:
    return b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, most)))


def _decoded_views_with_in(data: bytes) -> list[bytes]:
    """``decoded_views`` as it read before (``b"%" in data`` ...)."""
    from urllib.parse import unquote_to_bytes

    from vaultproxy.values import placeholders as ph

    out = [data]
    if b"%" in data:
        view = data
        for _ in range(ph._MAX_DECODE_ROUNDS):
            if not ph._PERCENT_RE.search(view):
                break
            view = unquote_to_bytes(view)
            out.append(view)
    if b"+" in data:
        out.append(unquote_to_bytes(data.replace(b"+", b" ")))
    if b"\\" in data:
        out.append(ph._json_unescape(data))
    creds = ph.basic_credentials(data)
    if creds is not None:
        out.extend(_decoded_views_with_in(creds))
    return out


def test_decoded_views_is_the_in_form() -> None:
    from vaultproxy.values.placeholders import decoded_views

    rng = random.Random(31)
    many = 0
    for _ in range(3000):
        data = _joined(rng)
        if rng.random() < 0.1:
            data = b"Basic " + base64.b64encode(_joined(rng))
        got = list(decoded_views(data))
        assert got == _decoded_views_with_in(data), data
        many += len(got) > 1
        if not (b"%" in data or b"+" in data):  # (unquote_to_bytes takes bytes only)
            assert list(decoded_views(bytearray(data))) == got  # another type: ``in`` itself
    assert many > 1000  # twin: the decodings are reached


def test_map_param_values_is_the_in_form() -> None:
    from vaultproxy.inject.query import map_param_values, param_name

    def with_in(query: bytes, name: str, fn: Callable[[bytes], bytes]) -> bytes:
        if not query:
            return query
        target = name.encode("utf-8")
        out = []
        for pair in query.split(b"&"):
            if b";" not in pair and b"=" in pair and param_name(pair) == target:
                raw_name, _, value = pair.partition(b"=")
                pair = raw_name + b"=" + fn(value)
            out.append(pair)
        return b"&".join(out)

    rng = random.Random(37)
    changed = 0
    for _ in range(3000):
        query = b"&".join(rng.choice([b"a=1", b"a", b"a=1;b", b";a=1", b"b=PH-1", b"a=%41", b"",
                                      b"a;=x", b"==", _joined(rng, 2)])
                          for _ in range(rng.randint(0, 4)))
        got = map_param_values(query, "a", lambda v: v + b"!")
        assert got == with_in(query, "a", lambda v: v + b"!"), query
        changed += got != query
    assert changed > 500  # twin: pairs are rewritten


def test_sub_header_is_the_in_form() -> None:
    from vaultproxy.config.models import Service
    from vaultproxy.inject import request
    from vaultproxy.inject.strategy import header_safe
    from vaultproxy.values.placeholders import basic_credentials, substitute

    service = Service(name="s", hosts=("x.test",), mode="placeholder", auth="bearer")

    def with_in(value: bytes, ph: bytes, secret: bytes) -> bytes:
        creds = basic_credentials(value)
        if creds is not None and ph in creds:
            scheme = value.strip().split(None, 1)[0]
            return scheme + b" " + base64.b64encode(creds.replace(ph, secret))
        if ph in value:
            return substitute(value, ph, header_safe(service, secret), "raw")
        return value

    rng = random.Random(41)
    changed = 0
    for _ in range(3000):
        value = _joined(rng).replace(b"\r", b"").replace(b"\n", b"")
        if rng.random() < 0.3:
            value = rng.choice([b"Basic ", b"basic "]) + base64.b64encode(_joined(rng))
        got = request._sub_header(value, b"PH-1", b"s3cret", service)
        assert got == with_in(value, b"PH-1", b"s3cret"), value
        changed += got != value
    assert changed > 500  # twin: both substitutions are reached


def test_head_scan_folded_is_the_in_form() -> None:
    """``HeadScan`` marks a head folded exactly when ``b"\\r\\n " in`` or ``b"\\r\\n\\t" in``
    its head's bytes (seeded heads, fed whole or in two pieces)."""
    from vaultproxy.net.outbound import HeadScan

    rng = random.Random(43)
    folded = 0
    for _ in range(3000):
        lines = [rng.choice([b"A: b", b" c", b"\tc", b"X:\t y", b"Y: z ", b"", b"K: \x00"])
                 for _ in range(rng.randint(0, 4))]
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines if line)
        head += b"\r\n"
        want = b"\r\n " in head or b"\r\n\t" in head
        scan = HeadScan()
        scan.start()
        cut = rng.randint(0, len(head))
        scan.feed(head[:cut])
        scan.feed(head[cut:])
        assert scan.folded is want, head
        assert scan.status == 200
        folded += want
    assert 500 < folded < 2900  # twin: both answers are reached


def test_basic_username_colon_is_refused() -> None:
    """The Basic strategy's ``:`` check (``holds``) refuses exactly the usernames that hold a
    ``:`` (seeded), as ``b":" in username`` did."""
    from vaultproxy.config.models import Service
    from vaultproxy.errors import SecretMissing
    from vaultproxy.inject.basic import Basic
    from vaultproxy.inject.strategy import Draft
    from vaultproxy.secret import Secret

    service = Service(name="b", hosts=("x.test",), mode="host_inject", auth="basic")
    rng = random.Random(47)
    refused = 0
    for _ in range(500):
        user = _joined(rng, 3).replace(b"\r", b"").replace(b"\n", b"") or b"u"
        draft = Draft(headers=[], path=b"/", query=None)
        fields = {"username": Secret(user), "password": Secret(b"pw")}
        try:
            Basic().inject(draft, service, None, fields)
            outcome = False
        except SecretMissing:
            outcome = True
        assert outcome is (b":" in user), user
        refused += outcome
    assert 20 < refused < 480  # twin: both answers are reached


def test_h1pool_done_awaits_as_the_future() -> None:
    """``h1pool._done(fut)`` ends as ``await fut`` does for seeded futures: set now or
    later (a result, an exception, a cancel), the awaiting task cancelled while it waits
    (the future is cancelled with it, the same message), or a future that is never
    finished (still pending when the loop stops asking)."""
    from vaultproxy.net import h1pool

    async def one(kind: str, when: int, via_done: bool) -> tuple[str, object, bool]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if kind == "result":
                fut.set_result(None)
            elif kind == "error":
                fut.set_exception(ValueError("boom"))
            elif kind == "cancel":
                fut.cancel("why")

        async def waits() -> object:
            return await (h1pool._done(fut) if via_done else fut)

        if when == 0:
            finish()
        task = asyncio.ensure_future(waits())
        for _ in range(when):
            await asyncio.sleep(0)
        if kind == "task-cancel":
            task.cancel("stop")
        elif when:
            finish()
        for _ in range(3):
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return ("pending", None, fut.cancelled())
        exc = task.exception() if not task.cancelled() else None
        outcome = ("cancelled" if task.cancelled() else repr(exc) if exc else "ok")
        return (outcome, None if task.cancelled() or exc else task.result(), fut.cancelled())

    async def main() -> int:
        rng = random.Random(53)
        kinds = ["result", "error", "cancel", "task-cancel", "never"]
        seen = set()
        for _ in range(300):
            kind, when = rng.choice(kinds), rng.randint(0, 2)
            want = await one(kind, when, via_done=False)
            assert await one(kind, when, via_done=True) == want, (kind, when)
            seen.add(want[0])
        return len(seen)

    assert asyncio.run(main()) >= 4  # twin: ok, an error, a cancel and a wait are reached
