"""What the stages of one chain share, handed to each stage when the chain is built: the
process's live state, the table of client connections, and which stages are loaded (the Ready stage
refuses traffic until every one is)."""

from __future__ import annotations

import asyncio

from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import NotReady
from vaultproxy.stages.connections import Connections

REQUIRED_STAGES = frozenset(
    {"Identify", "Route", "Dial", "RequestGate", "Mint", "Inject", "ResponseGate",
     "Record"}
)


class Runtime:
    def __init__(self, live: Live | None = None) -> None:
        self.live = live if live is not None else Live()
        self.connections = Connections()
        self._loaded: set[str] = set()
        self.complete = False  # REQUIRED_STAGES <= _loaded, kept on each load/unload
        # Set once the run is announced (run.json, the ready line): until then the Ready stage holds
        # every new connection (``vaultproxy run``; None under mitmdump: serve at once).
        self.serving: asyncio.Event | None = None

    def state(self) -> ProxyState:
        """The live state; NotReady (503) when no home is loaded (``Live.require``, one
        call less: several stages ask per request)."""
        st = self.live.state
        if st is None:
            raise NotReady()
        return st

    def current(self) -> ProxyState | None:
        return self.live.state

    def stage_loaded(self, name: str) -> None:
        self._loaded.add(name)
        self.complete = REQUIRED_STAGES <= self._loaded

    def stage_unloaded(self, name: str) -> None:
        self._loaded.discard(name)
        self.complete = REQUIRED_STAGES <= self._loaded

    def chain_complete(self) -> bool:
        """Every required stage is loaded (asked by Ready on every request: kept, not
        recomputed)."""
        return self.complete


class Stage:
    """A stage's share of the chain: ``self.rt``, and the load/done bookkeeping."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def load(self, loader: object) -> None:
        self.rt.stage_loaded(type(self).__name__)

    def done(self) -> None:
        self.rt.stage_unloaded(type(self).__name__)
