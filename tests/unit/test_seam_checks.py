"""The engine seam checks itself: a defence whose mitmproxy/pyOpenSSL symbol is gone refuses
start-up; a speed patch whose symbol is gone keeps mitmproxy's own behaviour, said in a log
line. Twins: with every symbol present, both are quiet."""

from __future__ import annotations

import socket

import pytest
from mitmproxy.proxy import mode_servers
from mitmproxy.proxy.layers.http import _http1
from OpenSSL import SSL

from vaultproxy.errors import VaultproxyError
from vaultproxy.seam import defences, listener, openssl
from vaultproxy.seam.need import EngineMismatch


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() may run again; what it patches is put back after the test."""
    from mitmproxy.proxy.layers import websocket
    from mitmproxy.proxy.layers.http import _http2

    for owner, name in [
        (_http1, "make_error_response"),
        (_http1, "make_body_reader"),
        (_http1.Http1Client, "read_headers"),
        (_http2.Http2Connection, "_handle_event"),
        (websocket.WebsocketConnection, "events"),
    ]:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(defences, "_installed", False)


def test_install_with_every_symbol_present() -> None:
    defences.install()
    assert defences.installed()
    assert defences.keylog_active() is False


@pytest.mark.parametrize(
    ("owner", "name"),
    [(_http1, "make_error_response"), (_http1, "make_body_reader")],
)
def test_a_missing_defence_symbol_refuses(
    fresh: None, monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(EngineMismatch, match=name):
        defences.install()
    assert not defences.installed()


def test_a_missing_openssl_binding_refuses(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class Lib:  # pyOpenSSL's bindings without the hostname check
        SSL_get0_param = X509_VERIFY_PARAM_set_hostflags = X509_VERIFY_PARAM_set1_ip = None

    monkeypatch.setattr(SSL, "_lib", Lib())
    with pytest.raises(EngineMismatch, match="X509_VERIFY_PARAM_set1_host"):
        openssl.check()


def test_the_keylog_guard_symbol_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.net import tls as net_tls

    monkeypatch.delattr(net_tls, "log_master_secret")
    with pytest.raises(EngineMismatch, match="log_master_secret"):
        defences.keylog_active()


def test_the_shared_listener_without_its_symbol_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(mode_servers, "RegularInstance")
    with socket.socket() as s, pytest.raises(VaultproxyError, match="listening socket"):
        listener.use(s)
    assert listener._sock is None
