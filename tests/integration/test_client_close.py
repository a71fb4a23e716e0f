"""A client that pipelines requests and closes (FIN) while its connection is still held by
the Gate (the run is not serving yet) must not crash mitmproxy's connection handler.

mitmproxy runs tasks eagerly: with the client's bytes and FIN already buffered, the client's
``handle_connection`` task ran to its end inside ``create_task``, before ``handle_client``
recorded it: "mitmproxy has crashed!" (an assertion in ``close_connection``) and then
``KeyError: Client(...)`` at ``proxy/server.py`` line 154 (12.3.1). The seam makes the task
yield once first (seam/defences.py). The twin runs the same probe with mitmproxy's own
``handle_connection`` and sees the KeyError.

The proxy runs in this process (the real Master, stages and listener), so the test can hold
the Gate closed while the clients write and close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from pathlib import Path

import pytest

from tests.harness.proxy import PASSWORD, ProxyHome
from vaultproxy.ca import materialize_mitm_confdir
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.engine.master import build_master, wait_listening
from vaultproxy.files.home import Home
from vaultproxy.seam import defences
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration

SERVICES = """
[[service]]
name = "k"
hosts = ["k.api.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:9"
allow_loopback = true
"""

PROBES = [
    b"",  # connected and closed at once
    b"GET / HT",  # closed mid-request-line
    b"CONNECT k.api.test:443 HTTP/1.1\r\n",  # closed mid-head
    b"GET / HTTP/1.1\r\nHost: k.api.test\r\n\r\n" * 3,  # origin-form to a proxy, pipelined
    b"CONNECT k.api.test:443 HTTP/1.1\r\nHost: k.api.test:443\r\n\r\n" * 2,
    b"GET http://k.api.test/ HTTP/1.1\r\nHost: k.api.test\r\nContent-Length: 10\r\n\r\nabc",
    b"\x16\x03\x01\x00\x05hello",  # not HTTP at all
]


async def _probe(home: Path) -> list[bytes]:
    state = ProxyState.load(Home(home))
    state.unlock_sync(Secret(PASSWORD))
    serving = asyncio.Event()  # held: every connection waits in Gate.client_connected
    m = build_master(Live(state), str(materialize_mitm_confdir(Home(home))),
                     ("127.0.0.1", 0), serving)
    task = asyncio.create_task(m.run())
    replies: list[bytes] = []
    try:
        port = (await wait_listening(m, task))[0][1]
        conns = []
        for probe in PROBES * 3:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(probe)
            writer.write_eof()  # pipelined, then closed: all of it buffered before serving
            conns.append((reader, writer))
        await asyncio.sleep(0.3)
        serving.set()
        for reader, writer in conns:
            replies.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
        await asyncio.sleep(0.3)
    finally:
        m.shutdown()
        await asyncio.wait_for(task, 10)
    return replies


def _crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """mitmproxy's own error lines: "mitmproxy has crashed!" (AssertionError), "Unhandled
    error in task." (KeyError: Client(...))."""
    out = []
    for r in caplog.records:
        if r.levelno >= logging.ERROR and r.name.startswith("mitmproxy"):
            kind = r.exc_info[0].__name__ if r.exc_info and r.exc_info[0] else ""
            out.append(f"{r.getMessage()[:60]} {kind}")
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ProxyHome.create(tmp_path_factory.mktemp("client-close"), SERVICES, {"k": "v" * 16}).path


def test_pipelined_requests_then_close_before_serving_crash_nothing(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    replies = asyncio.run(_probe(home))
    assert _crashes(caplog) == []
    assert len(replies) == 3 * len(PROBES)  # every connection was closed, none hangs
    assert all(r == b"" or r.startswith(b"HTTP/1.1 ") for r in replies)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_twin_mitmproxys_own_handler_crashes_on_the_same_probe(
    home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mitmproxy.proxy import server

    from vaultproxy.stages import Runtime, seam_hooks

    defences.install(seam_hooks(Runtime()))
    monkeypatch.setattr(server.ConnectionHandler, "handle_connection",
                        defences.originals["handle_connection"])
    caplog.set_level(logging.WARNING)
    asyncio.run(_probe(home))
    with warnings.catch_warnings():  # the crashed handlers never closed their sockets
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    crashes = _crashes(caplog)
    assert any(c.endswith("KeyError") for c in crashes), crashes
    assert any("has crashed" in c for c in crashes), crashes
