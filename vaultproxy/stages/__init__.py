"""mitmproxy addon stages, in chain order:

    Ready -> Identify -> Route -> Dial -> RequestGate -> Mint -> Inject -> Pool
    -> ResponseGate -> Record -> Deadline

Deadline (last: it only watches) bounds every wait on an upstream. Pool (after Inject: it
decides whether the request, as Inject left it, goes through the warm upstream pool) answers
from a shared upstream connection after every request check ran.

Ready holds and refuses traffic until the whole chain, the engine seam and a home are in
place (a readiness gate, not a request check). Identify takes the one decision and enforces
its refusal; Route acts on a CONNECT's, Dial on the upstream connection. RequestGate is the
last stage before any credential is added: a request it refuses never
reaches Inject. ResponseGate is the only way back to the agent: every byte an intercepted
upstream sends passes through it (the engine seam, seam/defences.py, routes what mitmproxy
would otherwise answer on its own through it too).

Each stage is a small class whose hooks run inside ``guard.guarded``: an exception becomes a
deny response on the flow (mitmproxy itself would log it and carry on down the chain).
That deny is the one place a refusal is recorded (``FlowRecord.refusal``); a later stage
asks ``FlowRecord.answered``, never ``flow.response``, which an upstream fills too.
"""

from __future__ import annotations

import functools

from vaultproxy.seam.defences import Hooks
from vaultproxy.stages import record, response_gate
from vaultproxy.stages.deadline import Deadline
from vaultproxy.stages.dial import Dial
from vaultproxy.stages.identify import Identify
from vaultproxy.stages.inject import Inject
from vaultproxy.stages.mint import Mint
from vaultproxy.stages.pool import Pool
from vaultproxy.stages.ready import Ready
from vaultproxy.stages.record import Record
from vaultproxy.stages.request_gate import RequestGate
from vaultproxy.stages.reserved import Reserved
from vaultproxy.stages.response_gate import ResponseGate
from vaultproxy.stages.route import Route
from vaultproxy.stages.runtime import Runtime


def chain(rt: Runtime) -> list[object]:
    """Our stages in the order they must run (before mitmproxy's defaults), sharing ``rt``."""
    stages = (Identify, Route, Dial, RequestGate, Mint, Inject, Pool, ResponseGate, Record,
              Deadline)
    # Reserved first: https://vaultproxy.internal/mcp is answered by the proxy (SPEC §11)
    return [Reserved(rt), *(stage(rt) for stage in stages)]


def seam_hooks(rt: Runtime) -> Hooks:
    """What the engine seam calls back into this chain, handed to it by the one
    ``seam.defences.install`` call at start."""
    return Hooks(
        ws_control=response_gate.ws_control,
        refused_head=functools.partial(record.refused_head, rt),
    )


__all__ = [
    "Deadline",
    "Dial",
    "Identify",
    "Inject",
    "Mint",
    "Pool",
    "Ready",
    "Record",
    "RequestGate",
    "Reserved",
    "ResponseGate",
    "Route",
    "Runtime",
    "chain",
    "seam_hooks",
]
