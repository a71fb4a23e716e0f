"""mitmproxy addon stages, in chain order:

    Gate -> Identify -> Route -> Connect -> RequestGate -> Mint -> Inject -> ResponseGate
    -> Record

RequestGate is the last stage before any credential is added: a request it refuses never
reaches Inject. ResponseGate is the only way back to the agent: every byte an intercepted
upstream sends passes through it (the engine seam, seam/defences.py, routes what mitmproxy
would otherwise answer on its own through it too).

Each stage is a small class whose hooks run inside ``guard.guarded``: an exception becomes a
deny response on the flow (mitmproxy itself would log it and carry on down the chain).
"""

from __future__ import annotations

from vaultproxy.stages.connect import Connect
from vaultproxy.stages.gate import Gate
from vaultproxy.stages.identify import Identify
from vaultproxy.stages.inject import Inject
from vaultproxy.stages.mint import Mint
from vaultproxy.stages.record import Record
from vaultproxy.stages.request_gate import RequestGate
from vaultproxy.stages.reserved import Reserved
from vaultproxy.stages.response_gate import ResponseGate
from vaultproxy.stages.route import Route
from vaultproxy.stages.runtime import Runtime


def chain(rt: Runtime) -> list[object]:
    """Our stages in the order they must run (before mitmproxy's defaults), sharing ``rt``."""
    stages = (Identify, Route, Connect, RequestGate, Mint, Inject, ResponseGate, Record)
    # Reserved first: https://vaultproxy.internal/mcp is answered by the proxy (SPEC §11)
    return [Reserved(rt), *(stage(rt) for stage in stages)]


__all__ = [
    "Connect",
    "Gate",
    "Identify",
    "Inject",
    "Mint",
    "Record",
    "RequestGate",
    "Reserved",
    "ResponseGate",
    "Route",
    "Runtime",
    "chain",
]
