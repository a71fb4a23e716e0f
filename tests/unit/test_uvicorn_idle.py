"""The admin API's and dashboard's uvicorn servers sleep while idle (seam/signals.py): their
``main_loop`` runs ``on_tick(0)`` once and then waits for ``should_exit``, where uvicorn's
own wakes the loop every 0.1 s. Compared with uvicorn's own ``main_loop`` on the same app:
the same bytes on the wire, the same stop; a config that needs the ticks, or a uvicorn
whose loop differs, gets uvicorn's own."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from vaultproxy.seam import signals


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = scope["path"].encode() * 3
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-n", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class _Stock(uvicorn.Server):
    """The reference: uvicorn's own ``main_loop`` (its 0.1 s ticks), signals left alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(**kw: Any) -> uvicorn.Config:
    base: dict[str, Any] = dict(
        lifespan="off", log_config=None, log_level="warning", access_log=False,
        server_header=False, date_header=False, proxy_headers=False, ws="none",
        timeout_graceful_shutdown=5, limit_concurrency=200, interface="asgi3",
        headers=[("x-default", "kept")])
    base.update(kw)
    return uvicorn.Config(_app, **base)


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


async def _serve(server: uvicorn.Server, idle: float, paths: list[str],
                 ) -> tuple[list[bytes], int, float]:
    """Serve, answer ``paths``, stay idle ``idle`` s counting ``on_tick`` calls, then stop:
    the answers, the ticks, and how long the stop took."""
    ticks = 0
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        nonlocal ticks
        ticks += 1
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    sock = _listener()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.005)
    port = sock.getsockname()[1]
    answers = [await _get(port, p) for p in paths]
    await asyncio.sleep(idle)
    seen = ticks
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    server.should_exit = True
    await asyncio.wait_for(task, 5)
    return answers, seen, loop.time() - t0


def test_quiet_main_loop_answers_as_uvicorns_own_and_never_ticks_while_idle() -> None:
    """Seeded paths through both servers: byte-identical answers (the default headers from
    ``on_tick(0)`` included); ours called ``on_tick`` once in 0.45 s of idleness where
    uvicorn's own calls it every 0.1 s (the twin)."""
    rng = random.Random(1203)
    paths = ["/" + "".join(rng.choice("abcxyz019") for _ in range(rng.randint(1, 40)))
             for _ in range(12)]
    assert signals.quiet_main_loop()

    async def both() -> tuple[tuple[list[bytes], int, float], tuple[list[bytes], int, float]]:
        ours = await _serve(signals.Server(_config()), 0.45, paths)
        stock = await _serve(_Stock(_config()), 0.45, paths)
        return ours, stock

    (ours, our_ticks, _), (stock, stock_ticks, _) = asyncio.run(both())
    assert ours == stock
    assert all(b"x-default: kept" in a for a in ours)
    assert our_ticks == 1
    assert stock_ticks >= 4


def test_should_exit_from_another_thread_stops_the_sleeping_server() -> None:
    """The stop reaches a server that sleeps without a timer, from the loop (above) and from
    another thread; before it, the server serves on."""
    async def scenario() -> bool:
        server = signals.Server(_config())
        sock = _listener()
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        alive = not task.done()
        t = threading.Thread(target=setattr, args=(server, "should_exit", True))
        t.start()
        await asyncio.wait_for(task, 3)
        t.join()
        return alive

    assert asyncio.run(scenario())


def test_should_exit_before_main_loop_stops_at_once() -> None:
    async def scenario() -> None:
        server = signals.Server(_config())
        server.should_exit = True
        await asyncio.wait_for(server.main_loop(), 1)

    asyncio.run(scenario())


@pytest.mark.parametrize("kw", [{"date_header": True}, {"limit_max_requests": 1000},
                                {"callback_notify": lambda: None}])
def test_a_config_that_needs_the_ticks_gets_uvicorns_own_loop(kw: dict[str, Any]) -> None:
    """Date header, request limit, notify callback: uvicorn's ticks run (twin: without them,
    none, above)."""
    server = signals.Server(_config(**kw))
    server.config.load()
    assert server.ticks()
    if kw.get("date_header"):
        answers, ticks, _ = asyncio.run(_serve(server, 0.35, ["/a"]))
        assert ticks >= 3
        assert b"date: " in answers[0]
    assert not signals.Server(_config()).ticks()


def test_another_uvicorn_main_loop_keeps_uvicorns_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uvicorn whose ``on_tick`` (or ``main_loop``) is not the one this was written against
    ticks as it always did. Twin: today's is recognised."""
    assert signals.quiet_main_loop()

    async def on_tick(self: object, counter: int) -> bool:
        return False

    monkeypatch.setattr(uvicorn.Server, "on_tick", on_tick)
    assert not signals.quiet_main_loop()
    monkeypatch.delitem(signals.__dict__, "Server", raising=False)
    server = signals.Server(_config())
    assert server.ticks()
