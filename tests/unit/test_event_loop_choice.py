"""Which event loop a serving process runs on (engine/loop.py): uvloop by default,
asyncio's default loop with ``VAULTPROXY_UVLOOP=0`` or when uvloop cannot be imported (one
WARNING), and a clear refusal of a value it does not understand."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import pytest

from vaultproxy.engine import loop as engine_loop
from vaultproxy.errors import UsageError
from vaultproxy.seam.accept import SharedServer


def _loop_name() -> str:
    async def name() -> str:
        return engine_loop.describe(asyncio.get_running_loop())

    return engine_loop.run(name)


def test_default_is_uvloop(monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(engine_loop.ENV, raising=False)
    import uvloop

    with caplog.at_level(logging.INFO, logger="vaultproxy.loop"):
        assert _loop_name() == f"uvloop {uvloop.__version__}"  # type: ignore[attr-defined]
    assert [r.getMessage() for r in caplog.records] == [
        f"event loop: uvloop {uvloop.__version__} (pid {os.getpid()})"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["0", "false", "no", "off", " OFF "])
def test_twin_switched_off_is_asyncio_default_loop(monkeypatch: pytest.MonkeyPatch,
                                                   value: str) -> None:
    monkeypatch.setenv(engine_loop.ENV, value)
    assert _loop_name() == "asyncio _UnixSelectorEventLoop"


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", ""])
def test_switched_on_explicitly(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(engine_loop.ENV, value)
    assert _loop_name().startswith("uvloop ")


def test_a_value_it_does_not_understand_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine_loop.ENV, "2")
    made = []

    async def never() -> None:  # pragma: no cover - must not even be called
        made.append(1)

    with pytest.raises(UsageError, match=r"VAULTPROXY_UVLOOP='2' is not understood: set it "
                                         r"to 1 \(uvloop, the default\) or 0"):
        engine_loop.run(never)
    assert made == []


def test_without_uvloop_one_warning_and_the_default_loop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(engine_loop.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    with caplog.at_level(logging.WARNING, logger="vaultproxy.loop"):
        assert _loop_name() == "asyncio _UnixSelectorEventLoop"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "uvloop cannot be imported" in warnings[0].getMessage()
    assert "serving on asyncio's default event loop" in warnings[0].getMessage()


@pytest.mark.parametrize("value", ["1", "0"], ids=["uvloop", "asyncio"])
def test_shared_server_accepts_one_connection_per_wake_up(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """seam/accept.py on either loop: connections queued at once are taken one per
    readiness callback (what lets ``--workers`` processes share one accept queue), each
    served with TCP_NODELAY."""
    monkeypatch.setenv(engine_loop.ENV, value)

    async def run() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as a passed fd
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        served: list[int] = []
        nodelay: list[int] = []
        done = asyncio.Event()

        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nodelay.append(w.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY))
            w.close()
            if len(nodelay) == 3:
                done.set()

        server = SharedServer(listener, handle, loop)
        wake = server._on_readable

        def counted() -> None:
            before = len(server._tasks)
            wake()
            served.append(len(server._tasks) - before)

        loop.remove_reader(listener.fileno())
        loop.add_reader(listener.fileno(), counted)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            await asyncio.wait_for(done.wait(), 10)
        finally:
            server.close()
            for c in clients:
                c.close()
        return served, nodelay

    served, nodelay = engine_loop.run(run)
    assert [n for n in served if n] == [1, 1, 1]  # three wake-ups, one connection each
    assert nodelay == [1, 1, 1]
