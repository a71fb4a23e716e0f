"""The load gate of addons/vaultproxy.py (SECURITY 66), in-process: closed, it refuses every
kind of flow mitmproxy would forward; only the module whose ``load`` closed it opens it, and
only with the Ready stage in the master. (The real mitmdump, each way a load can fail:
tests/integration/test_mitmdump.py.)"""

from __future__ import annotations

import importlib.util
import itertools
from types import ModuleType
from typing import Any

from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from tests.harness.proxy import REPO

_n = itertools.count()


def _shim() -> ModuleType:
    """A fresh execution of the script, as mitmproxy's loader makes one (its own name)."""
    spec = importlib.util.spec_from_file_location(
        f"vpt_shim_{next(_n)}", REPO / "addons" / "vaultproxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refuses_all(gate: Any) -> None:
    f = tflow.tflow()
    gate.requestheaders(f)
    assert f.response.status_code == 503
    assert f.response.headers["X-Vaultproxy-Error"] == "not_loaded"
    c = tflow.tflow()
    gate.http_connect(c)
    assert c.response.status_code == 503
    for flow in (tflow.ttcpflow(), tflow.tudpflow(), tflow.twebsocketflow()):
        kind = {"tcp": "tcp_start", "udp": "udp_start", "http": "websocket_start"}[flow.type]
        getattr(gate, kind)(flow)
        assert flow.error is not None and not flow.live, kind
    d = tflow.tdnsflow()
    gate.dns_request(d)
    assert d.response is not None and d.response.response_code == response_codes.REFUSED
    data = server_hooks.ServerConnectionHookData(tflow.tserver_conn(), tflow.tclient_conn())
    gate.server_connect(data)
    assert data.server.error


def _passes_all(gate: Any) -> None:
    f, c = tflow.tflow(), tflow.tflow()
    gate.requestheaders(f)
    gate.http_connect(c)
    assert f.response is None and c.response is None
    t = tflow.ttcpflow()
    gate.tcp_start(t)
    assert t.live
    data = server_hooks.ServerConnectionHookData(tflow.tserver_conn(), tflow.tclient_conn())
    gate.server_connect(data)
    assert data.server.error is None


class _Ready:
    name = "ready"


def test_the_gate_refuses_until_its_own_load_is_configured_with_ready() -> None:
    with taddons.context() as tctx:
        m = _shim()
        m.load(None)  # (no running loop: the deferred check is skipped)
        gate = tctx.master.addons.get(m.GATE)
        assert gate is not None and gate.cause == "loading"
        _refuses_all(gate)
        # ``script.run``: a fresh module configured without its load leaves the gate closed
        _shim().configure(set())
        assert tctx.master.addons.get(m.GATE) is gate and gate.cause == "loading"
        # no Ready stage in the master: the loading module keeps it closed, and says so
        m.configure(set())
        assert tctx.master.addons.get(m.GATE) is gate and gate.cause == "no Ready stage"
        _refuses_all(gate)
        # twin: a reload (the same gate, closed again) with the Ready stage in: it goes
        tctx.master.addons.add(_Ready())
        m2 = _shim()
        m2.load(None)
        assert tctx.master.addons.get(m.GATE) is gate and gate.cause == "loading"
        m2.configure(set())
        assert tctx.master.addons.get(m.GATE) is None
        _passes_all(gate)
