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
from vaultproxy.seam import defences, listener, openssl, refusals, signals
from vaultproxy.seam.need import EngineMismatch

HOOKS = defences.Hooks(ws_control=lambda conn_id, event: event,
                       refused_head=lambda client, status: None)


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


@pytest.fixture(autouse=True)
def _keep_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() hands in the test's hooks; the process's own are put back after."""
    monkeypatch.setattr(defences, "ws_control_filter", defences.ws_control_filter)
    monkeypatch.setattr(refusals, "on_refused", refusals.on_refused)


def test_install_with_every_symbol_present() -> None:
    defences.install(HOOKS)
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
        defences.install(HOOKS)
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


def test_uvicorn_that_no_longer_captures_signals_there_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin server's no-op ``capture_signals`` only keeps the signals ours while
    uvicorn's ``serve`` calls it. Twin: today's uvicorn passes."""
    import uvicorn

    signals.check()

    async def serve(self: object, sockets: object = None) -> None:  # installs its own
        return None

    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    with pytest.raises(EngineMismatch, match="capture_signals"):
        signals.check()


def test_no_uvicorn_server_without_the_signal_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``signals.Server`` is built on first use (a worker never imports uvicorn), and only
    after ``check()``: with a uvicorn that would take the signals, there is no Server to
    run. Twin: today's uvicorn gets one whose ``capture_signals`` is ours."""
    import uvicorn

    async def serve(self: object, sockets: object = None) -> None:
        return None

    monkeypatch.delitem(signals.__dict__, "Server", raising=False)
    with monkeypatch.context() as m:
        m.setattr(uvicorn.Server, "serve", serve)
        with pytest.raises(EngineMismatch, match="capture_signals"):
            _ = signals.Server
    server = signals.Server
    assert issubclass(server, uvicorn.Server)
    assert server.capture_signals is not uvicorn.Server.capture_signals


def test_importing_the_chain_registers_nothing_with_the_engine() -> None:
    """The seam is coupled to the stages only by the explicit ``install(hooks)`` at start.
    Twin: after install, the hooks are the chain's."""
    import subprocess
    import sys

    code = (
        "import vaultproxy.stages, vaultproxy.engine.master\n"
        "from vaultproxy.seam import defences, refusals\n"
        "assert defences.ws_control_filter is None and refusals.on_refused is None\n"
        "assert not defences.installed()\n"
        "from vaultproxy.stages import Runtime, response_gate, seam_hooks\n"
        "defences.install(seam_hooks(Runtime()))\n"
        "assert defences.ws_control_filter is response_gate.ws_control\n"
        "assert refusals.on_refused is not None and defences.installed()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
