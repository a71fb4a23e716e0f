"""The lean bypass (seam/bypass.py) is a speed patch: a mitmproxy whose layers moved keeps the
whole stack, said in one WARNING; ``VAULTPROXY_LEAN_BYPASS=0`` keeps it too. Twin: with
every name present and no switch, it is on and quiet."""

from __future__ import annotations

import logging

import pytest
from mitmproxy.proxy.layers import ServerTLSLayer
from mitmproxy.proxy.layers.http import HttpStream, _http1

from vaultproxy.seam import bypass


@pytest.fixture(autouse=True)
def _unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bypass, "_checked", None)
    monkeypatch.delenv(bypass.ENV, raising=False)


def test_on_with_every_name_present(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert bypass.enabled()
    assert "no lean bypass" not in caplog.text


@pytest.mark.parametrize(("owner", "name"), [
    (ServerTLSLayer, "wait_for_clienthello"),
    (HttpStream, "passthrough"),
    (_http1.Http1Connection, "passthrough"),
])
def test_a_moved_name_keeps_the_whole_stack(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture,
                                            owner: type, name: str) -> None:
    monkeypatch.delattr(owner, name)
    with caplog.at_level(logging.WARNING):
        assert not bypass.enabled()
    assert f".{name}: no lean bypass" in caplog.text


@pytest.mark.parametrize("value", ["0", "off"])
def test_switched_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(bypass.ENV, value)
    assert not bypass.enabled()
