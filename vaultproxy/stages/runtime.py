"""Where stages find the process's ProxyState. The package, not a script, holds it."""

from __future__ import annotations

from vaultproxy.errors import VaultproxyError
from vaultproxy.state import ProxyState

_current: ProxyState | None = None
_live_stages: set[str] = set()


class NotReady(VaultproxyError):
    status, code, public = 503, "not_ready", "vaultproxy is not configured (no home loaded)"


def install(state: ProxyState | None) -> None:
    global _current
    _current = state


def state() -> ProxyState:
    if _current is None:
        raise NotReady()
    return _current


def current() -> ProxyState | None:
    return _current


def stage_loaded(name: str) -> None:
    _live_stages.add(name)


def stage_unloaded(name: str) -> None:
    _live_stages.discard(name)


REQUIRED_STAGES = frozenset(
    {"Identify", "Route", "Connect", "RequestGate", "Inject", "ResponseGate", "Record"}
)


def chain_complete() -> bool:
    return REQUIRED_STAGES <= _live_stages
