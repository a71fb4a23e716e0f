"""mitmproxy addon stages, in chain order:
Gate -> Identify -> Route -> Connect -> Inject -> Scrub -> Record.

Each stage is a small class whose hooks run inside ``guard.guarded``: an exception becomes a
deny response on the flow (mitmproxy itself would log it and carry on down the chain).
"""

from __future__ import annotations

from vaultproxy.stages.connect import Connect
from vaultproxy.stages.gate import Gate
from vaultproxy.stages.identify import Identify
from vaultproxy.stages.inject import Inject
from vaultproxy.stages.record import Record
from vaultproxy.stages.route import Route
from vaultproxy.stages.scrub import Scrub


def chain() -> list[object]:
    """Our stages in the order they must run (before mitmproxy's defaults)."""
    return [Identify(), Route(), Connect(), Inject(), Scrub(), Record()]


__all__ = ["Connect", "Gate", "Identify", "Inject", "Record", "Route", "Scrub", "chain"]
