"""seam/connio.py's read loop (``_make_handle_connection``: mitmproxy's ``handle_connection``
with ``StreamReader.read(65535)`` inline) does what mitmproxy's does, on asyncio's loop and
on uvloop: for seeded scripts of bytes (small, and large enough to pause the transport and
to be read in two pieces), EOF, reader exceptions (an ``OSError``, anything else), a second
reader, cancellations (while it waits for bytes, inside ``server_event``, inside
``drain_writers``, while a half-closed connection waits) and UDP, the same events with the
same bytes, drains, pauses and resumes of the transport, connection state, writer close,
transports left, and the same end (returned, cancelled, raised). Its twin sees a read loop
that resumes the transport one read late."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy.proxy import events, server

from vaultproxy.seam import connio, defences, need

LIMIT = 40_000  # the reader pauses its transport above twice this; a read takes 65535


def _stock() -> Any:
    stock = defences.originals.get("handle_connection") or server.ConnectionHandler.\
        handle_connection
    assert need.unchanged(stock, connio.FINGERPRINTS["ConnectionHandler.handle_connection"],
                          connio.CODE_FINGERPRINTS["ConnectionHandler.handle_connection"])
    return stock


class _Transport:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def pause_reading(self) -> None:
        self.log.append("pause")

    def resume_reading(self) -> None:
        self.log.append("resume")


class _Writer:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def close(self) -> None:
        self.log.append("writer close")


class _Handler:
    """What ``handle_connection`` uses of a ``ConnectionHandler``; ``server_event`` and
    ``drain_writers`` log and, as the script says, wait a few loop turns."""

    def __init__(self, log: list[Any], waits: list[int]) -> None:
        self.log, self.waits = log, waits
        self.transports: dict[Any, Any] = {}

    async def _wait(self) -> None:
        for _ in range(self.waits.pop() if self.waits else 0):
            await asyncio.sleep(0)

    async def server_event(self, event: events.Event) -> None:
        data = getattr(event, "data", None)
        self.log.append(("event", type(event).__name__,
                         None if data is None else (len(data), hash(bytes(data)))))
        await self._wait()

    async def drain_writers(self) -> None:
        self.log.append("drain")
        await self._wait()


def _script(seed: int) -> tuple[list[tuple[str, Any]], list[int], str]:
    rnd = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    for _ in range(rnd.randrange(1, 12)):
        kind = rnd.choices(["data", "big", "turns", "cancel", "intruder", "exc", "edge"],
                           [10, 2, 6, 1, 0.5, 0.5, 1])[0]
        if kind == "edge":  # one read's size, give or take a byte
            ops.append(("data", rnd.randbytes(rnd.choice([65534, 65535, 65536]))))
        elif kind == "data":
            ops.append(("data", rnd.randbytes(rnd.randrange(1, 300))))
        elif kind == "big":
            ops.append(("data", rnd.randbytes(rnd.randrange(LIMIT, 3 * 65535))))
        elif kind == "turns":
            ops.append(("turns", rnd.randrange(0, 4)))
        elif kind == "exc":
            ops.append(("exc", rnd.choice([ConnectionResetError("reset"),
                                           RuntimeError("odd")])))
        else:
            ops.append((kind, None))
    end = rnd.choice(["eof", "eof", "cancel", "exc", "none"])
    waits = [rnd.choice([0, 0, 0, 1, 2]) for _ in range(40)]
    protocol = "udp" if rnd.random() < 0.1 else "tcp"
    ops.append(("end", end))
    return ops, waits, protocol


def _run(seed: int, make: Callable[[Any], Any], loop_name: str) -> list[Any]:
    ops, waits, protocol = _script(seed)
    log: list[Any] = []

    async def main() -> None:
        conn = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                 timestamp_start=0.0, state=connection.ConnectionState.OPEN,
                                 transport_protocol=protocol)
        h = _Handler(log, list(waits))
        reader = asyncio.StreamReader(limit=LIMIT)
        reader.set_transport(_Transport(log))  # type: ignore[arg-type]
        h.transports[conn] = server.ConnectionIO(reader=reader,
                                                 writer=_Writer(log))  # type: ignore[arg-type]
        task = asyncio.ensure_future(make(h)(h, conn))
        others: list[asyncio.Future[Any]] = []
        await asyncio.sleep(0)
        for kind, arg in ops:
            if kind == "data":
                if not reader._eof:  # type: ignore[attr-defined]
                    reader.feed_data(arg)
            elif kind == "turns":
                for _ in range(arg):
                    await asyncio.sleep(0)
            elif kind == "cancel" or arg == "cancel":
                task.cancel()
            elif kind == "exc":
                reader.set_exception(arg)
            elif arg == "exc":
                reader.set_exception(ConnectionResetError("gone"))
            elif kind == "intruder":
                others.append(asyncio.ensure_future(reader.read(10)))
            elif arg == "eof":
                reader.feed_eof()
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        if not task.done():
            log.append("still running: cancel")
            task.cancel()
        try:
            await task
            log.append("returned")
        except asyncio.CancelledError:
            log.append("cancelled")
        except Exception as e:  # noqa: BLE001
            log.append(("raised", type(e).__name__, str(e)))
        for other in others:
            if not other.done():
                other.cancel()
            try:
                log.append(("intruder", len(await other)))
            except BaseException as e:  # noqa: BLE001
                log.append(("intruder raised", type(e).__name__))
        log.append(("state", conn.state, conn in h.transports))

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return log


def _fast(stock: Any) -> Any:
    return connio._make_handle_connection(stock)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_read_loop_does_what_mitmproxys_does(loop_name: str) -> None:
    stock = _stock()
    kinds = set()
    for seed in range(300):
        fast, slow = _run(seed, lambda h: _fast(stock), loop_name), _run(
            seed, lambda h: stock, loop_name)
        assert fast == slow, seed
        kinds.update(str(e[0]) if isinstance(e, tuple) else e for e in slow)
    # the scripts reach every branch: pauses, resumes, each end, a second reader
    assert {"pause", "resume", "returned", "cancelled", "raised", "intruder raised",
            "still running: cancel", "writer close"} <= kinds, kinds


def test_twin_the_comparison_sees_a_resume_one_read_late() -> None:
    stock = _stock()

    def late(stock: Any) -> Any:
        fast = connio._make_handle_connection(stock)

        async def handle_connection(self: Any, connection: Any) -> None:
            reader = self.transports[connection].reader
            limit = reader._limit
            reader._limit = -1  # (never resumes after a read: only before the next wait)
            try:
                await fast(self, connection)
            finally:
                reader._limit = limit

        return handle_connection

    assert any(_run(seed, lambda h: late(stock), "asyncio") != _run(
        seed, lambda h: stock, "asyncio") for seed in range(100))


def test_other_readers_take_mitmproxys_loop() -> None:
    seen: list[Any] = []

    async def stock(self: Any, conn: Any) -> None:
        seen.append(conn)

    class Stream:
        pass

    async def main() -> None:
        h = _Handler([], [])
        h.transports["c"] = server.ConnectionIO(reader=Stream())  # type: ignore[arg-type]
        await connio._make_handle_connection(stock)(h, "c")

    asyncio.run(main())
    assert seen == ["c"]


def test_installed_under_the_client_handler() -> None:
    """With seam/defences.py's patches in place (as at start), its ``handle_connection``
    runs this read loop; mitmproxy's stays in ``originals`` for the twins."""
    from vaultproxy.stages import Runtime, seam_hooks

    defences.install(seam_hooks(Runtime()))
    assert connio.install_loop()
    assert defences.connection_loop["handle_connection"] is not defences.originals[
        "handle_connection"]
    assert connio.STOCK_LOOP == [defences.originals["handle_connection"]]
    assert connio.install_loop()  # (again: nothing changes)


# --- StreamReaderProtocol.data_received --------------------------------------------------


class _Unpausable(_Transport):
    def pause_reading(self) -> None:
        self.log.append("cannot pause")
        raise NotImplementedError


def _feed(seed: int, data_received: Callable[..., None], loop_name: str) -> list[Any]:
    """A protocol and its reader under a seeded script of bytes (some empty), reads of
    random sizes (one at a time, or a second one while one waits), cancelled reads, EOF
    and a reader gone: what the reader holds and what its reads and transport saw."""
    rnd = random.Random(seed)
    log: list[Any] = []

    async def main() -> None:
        reader = asyncio.StreamReader(limit=rnd.choice([16, 300, 2**16]))
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = (_Unpausable if rnd.random() < 0.2 else _Transport)(log)
        reader.set_transport(transport)  # type: ignore[arg-type]
        reads: list[asyncio.Task[bytes]] = []
        for _ in range(rnd.randrange(1, 40)):
            op = rnd.choices(["data", "empty", "read", "cancel", "turn", "eof", "gone"],
                             [10, 1, 5, 1, 4, 0.3, 0.2])[0]
            if op in ("data", "empty"):
                data = rnd.randbytes(rnd.randrange(1, 800)) if op == "data" else b""
                try:
                    data_received(protocol, data)
                    log.append(("fed", len(data)))
                except AssertionError as e:
                    log.append(("assert", str(e)))
            elif op == "read":
                reads.append(asyncio.ensure_future(reader.read(rnd.randrange(1, 900))))
            elif op == "cancel" and reads:
                rnd.choice(reads).cancel()
            elif op == "turn":
                await asyncio.sleep(0)
            elif op == "eof":
                reader.feed_eof()
            elif op == "gone":
                protocol._stream_reader_wr = None  # type: ignore[attr-defined]
            log.append(("reader", len(reader._buffer), reader._paused,  # type: ignore[attr-defined]
                        reader._waiter is None, reader._transport is None))  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        for task in reads:
            if not task.done():
                task.cancel()
            try:
                got = await task
                log.append(("read", len(got), hash(got)))
            except BaseException as e:  # noqa: BLE001
                log.append(("read raised", type(e).__name__))

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return log


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_data_received_does_what_asyncios_does(loop_name: str) -> None:
    assert connio.install() and connio.STOCK_PROTOCOL
    fast, stock = asyncio.StreamReaderProtocol.data_received, connio.STOCK_PROTOCOL[0]
    assert fast is not stock
    kinds: set[Any] = set()
    for seed in range(300):
        want = _feed(seed, stock, loop_name)
        assert _feed(seed, fast, loop_name) == want, seed
        kinds.update(e if isinstance(e, str) else e[0] for e in want)
        kinds.update(("paused",) for e in want if e[0] == "reader" and e[2])
    assert {"pause", "cannot pause", "resume", "assert", "read raised", ("paused",)} <= kinds, kinds


def test_twin_the_data_received_comparison_sees_a_transport_never_paused() -> None:
    fast, stock = asyncio.StreamReaderProtocol.data_received, connio.STOCK_PROTOCOL[0]

    def unpaused(self: Any, data: bytes) -> None:
        reader = self._stream_reader
        limit = reader._limit if reader is not None else 0
        if reader is not None:
            reader._limit = 1 << 30
        try:
            fast(self, data)
        finally:
            if reader is not None:
                reader._limit = limit

    assert any(_feed(seed, unpaused, "asyncio") != _feed(seed, stock, "asyncio")
               for seed in range(100))
