"""mitmdump entry point: `mitmdump -s addons/vaultproxy.py --set vaultproxy_home=DIR`.

A thin shim over the installed `vaultproxy` package (vaultproxy/engine/mitmdump.py), plus the
one thing that cannot live in the package: a load gate that refuses ALL traffic until this
script's registration in mitmdump has completed. mitmdump keeps serving when a script fails
(an import error, an exception in a ``load``, mitmproxy's deferred ``--set`` parse raising
half-way through the registration, a broken hot reload), and without our stages it would
forward everything unproxied. So:

- everything the import of the package and ``make_addons()`` raise is caught here, logged
  (cause and fix) and leaves the gate closed for good;
- this module's own ``load`` is mitmproxy's first call into the script (the module comes
  before its ``addons`` in every hook), and it puts the gate in front of mitmdump's chain,
  closed, before any of our code that could raise;
- this module's ``configure`` is only called once the registration went through (mitmproxy's
  ``Script.loadscript``); it takes the gate out again, leaving the Ready stage (which the
  package adds on the first load and which outlives reloads) in charge. A registration that
  raises never gets there: the gate stays and says so.

The gate imports nothing from vaultproxy (whose import may be what failed).
"""

import json
import logging
import os
import sys
import traceback
from typing import Any

from mitmproxy import ctx, http

_log = logging.getLogger("vaultproxy.loadgate")

# mitmproxy puts this script's folder first on sys.path, where this very file would shadow
# the `vaultproxy` package; take the folder (and any such shadow) out before importing.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if not hasattr(sys.modules.get("vaultproxy"), "__path__"):
    sys.modules.pop("vaultproxy", None)

GATE = "vaultproxy_loadgate"  # the gate's addon name: one gate per mitmdump, across reloads
_FIX = ("fix the cause (a vaultproxy installed in mitmdump's own Python: `pip install "
        "vaultproxy`, its dependencies, the traceback above), then restart mitmdump")


class LoadGate:
    """Refuses every flow mitmdump would forward while vaultproxy is not (fully) loaded:
    HTTP requests and CONNECTs get a 503, no upstream connection is opened at all
    (``server_connect``: TCP, UDP, TLS passthrough, websockets), DNS queries are refused."""

    name = GATE

    def __init__(self) -> None:
        self.cause: str | None = None

    def close(self, cause: str) -> None:
        self.cause = cause

    def _reply(self) -> http.Response:
        message = "vaultproxy failed to load in mitmdump; refusing traffic (see the proxy's log)"
        body = {"error": {"type": "vaultproxy_error", "code": "not_loaded", "message": message}}
        return http.Response.make(503, json.dumps(body).encode(), {
            "Content-Type": "application/json", "X-Vaultproxy-Error": "not_loaded",
            "x-should-retry": "false"})

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.cause is not None:
            flow.response = self._reply()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.cause is not None:
            flow.response = self._reply()

    def server_connect(self, data: Any) -> None:
        if self.cause is not None:
            data.server.error = "vaultproxy is not loaded: no upstream connection"

    def _kill(self, flow: Any) -> None:
        if self.cause is not None and flow.killable:
            flow.kill()

    tcp_start = udp_start = websocket_start = _kill

    def dns_request(self, flow: Any) -> None:
        if self.cause is not None:
            from mitmproxy.net.dns import response_codes

            flow.response = flow.request.fail(response_codes.REFUSED)


def _gate() -> LoadGate:
    """The master's gate (a reload finds the one the first load added), closed."""
    gate: Any = ctx.master.addons.get(GATE)
    if gate is None:
        gate = LoadGate()
        gate.close("loading")
        ctx.master.addons.add(gate)
    return gate  # type: ignore[no-any-return]


_failed: str | None = None
try:
    from vaultproxy.engine.mitmdump import make_addons

    addons = make_addons()
except Exception as e:  # anything: an ImportError, a SyntaxError after an upgrade, a bug
    _failed = f"{type(e).__name__}: {e}"
    addons = []
    _log.error("vaultproxy failed to load, refusing ALL traffic: %s\n%s\n  %s", _failed,
               "".join(traceback.format_exception(e)).rstrip(), _FIX)


_mine: LoadGate | None = None  # the gate this module's ``load`` closed


def load(loader: Any) -> None:
    """First of the script's ``load`` calls: the gate goes in, closed, before any of ours."""
    global _mine
    gate = _gate()
    gate.close(_failed or "loading")
    _mine = gate
    if _failed is None:
        import asyncio

        try:
            asyncio.get_running_loop().call_soon(_check_loaded, gate)
        except RuntimeError:  # no loop: the configure below (or its absence) still decides
            pass


def _check_loaded(gate: LoadGate) -> None:
    """Soon after ``load``: a registration that raised left the gate closed; say so."""
    if gate.cause == "loading":
        _log.error("vaultproxy failed to load, refusing ALL traffic: its registration in "
                   "mitmdump raised %s; %s", _escaped() or "(the error above names it)", _FIX)


def _escaped() -> str | None:
    """The exception that ended this script's loader task, if one did: mitmproxy logs what
    a ``load`` raises, except an OptionsError, which ends the task unreported."""
    loader: Any = ctx.master.addons.get("scriptloader")
    for script in getattr(loader, "addons", ()):
        task = getattr(script, "reloadtask", None)
        try:
            mine = os.path.samefile(script.fullpath, __file__)
        except (AttributeError, OSError):
            continue
        if mine and task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                return f"{type(exc).__name__}: {exc}"
    return None


def configure(updated: set[str]) -> None:
    """Called by mitmproxy only once the script registered whole: the Ready stage (in the
    chain since ``Bootstrap.load``) decides from here on; the gate goes, unless the import
    failed. Only a module whose ``load`` closed the gate opens it (``script.run`` configures
    a fresh module without loading it), and only with the Ready stage in the master."""
    gate: Any = ctx.master.addons.get(GATE)
    if _failed is not None or gate is None or gate is not _mine:
        return
    if ctx.master.addons.get("ready") is None:
        if gate.cause == "loading":
            gate.close("no Ready stage")
            _log.error("vaultproxy failed to load, refusing ALL traffic: its Ready stage is "
                       "not in mitmdump's chain; %s", _FIX)
        return
    gate.cause = None
    ctx.master.addons.remove(gate)
