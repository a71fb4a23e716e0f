"""The lean loop (seam/fastloop.py) is a speed patch: a mitmproxy whose connection handler
lost a name the loop uses keeps mitmproxy's loop, said in one WARNING;
``VAULTPROXY_LEAN_LOOP=0`` keeps it too. Twin: with every name present and no switch, it is
installed, on and quiet."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from mitmproxy.proxy import commands, server

from vaultproxy.seam import defences, fastloop, lean

# mitmproxy's own loop (seam/defences.py may have wrapped it in this process already)
STOCK = defences.originals.get("handle_connection", server.ConnectionHandler.handle_connection)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test installs on mitmproxy's own handler; the class is put back after."""
    monkeypatch.setattr(fastloop, "_installed", False)
    monkeypatch.delenv(fastloop.ENV, raising=False)
    before = server.ConnectionHandler.__dict__["handle_connection"]
    yield
    server.ConnectionHandler.handle_connection = before  # type: ignore[method-assign]


def test_on_with_every_name_present(caplog: pytest.LogCaptureFixture) -> None:
    before = server.ConnectionHandler.handle_connection
    with caplog.at_level(logging.WARNING):
        fastloop.install(lean.LeanHook, STOCK)
    assert fastloop.enabled()
    assert server.ConnectionHandler.handle_connection is not before
    assert "no lean loop" not in caplog.text


@pytest.mark.parametrize(("owner", "name"), [
    (server.ConnectionHandler, "drain_writers"),
    (server.ConnectionHandler, "hook_task"),
    (server, "ConnectionIO"),
    (commands, "RequestWakeup"),
])
def test_a_moved_name_keeps_mitmproxys_loop(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture,
                                            owner: object, name: str) -> None:
    before = server.ConnectionHandler.handle_connection
    monkeypatch.delattr(owner, name)
    with caplog.at_level(logging.WARNING):
        fastloop.install(lean.LeanHook, STOCK)
    assert not fastloop.enabled()
    assert server.ConnectionHandler.handle_connection is before
    assert f".{name}: no lean loop" in caplog.text
    assert caplog.text.count("no lean loop") == 1


@pytest.mark.parametrize("value", ["0", "off"])
def test_switched_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    fastloop.install(lean.LeanHook, STOCK)
    monkeypatch.setenv(fastloop.ENV, value)
    assert not fastloop.enabled()


def test_changed_code_keeps_mitmproxys_loop(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A mitmproxy (or Python) whose ``handle_connection`` or ``server_event`` is not the
    code this loop repeats: mitmproxy's loop, one WARNING naming it. Twin: the stock code
    matches (test_on_with_every_name_present)."""
    before = server.ConnectionHandler.handle_connection
    monkeypatch.setitem(fastloop.KNOWN, "server_event", {"0000000000000000"})
    with caplog.at_level(logging.WARNING):
        fastloop.install(lean.LeanHook, STOCK)
    assert not fastloop.enabled()
    assert server.ConnectionHandler.handle_connection is before
    assert "ConnectionHandler.server_event as this loop knows it: no lean loop" in caplog.text
    assert fastloop.fingerprint(STOCK) in fastloop.KNOWN["handle_connection"]
