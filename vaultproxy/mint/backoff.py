"""Backoff for a failing token endpoint, and the one bound on how long an agent waits.

After a failed mint, the service's next mint waits ``delay(n)`` -- exponential from
``BASE`` to ``CAP`` seconds with full jitter (a random point in the upper half), ``n`` the
failures in a row -- and a request meanwhile gets ``502 token_unavailable`` at once instead
of another exchange: a dead endpoint sees a handful of attempts, not one per request. A
success resets it. ``MINT_TIMEOUT`` (or ``[proxy] response_timeout`` if smaller) bounds one
mint, whatever the endpoint does; a worker's wait for the supervisor's answer is bounded by
it too (engine/tokens.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

BASE = 0.5
CAP = 30.0
MINT_TIMEOUT = 30.0  # seconds: the most an agent waits for a token (then 502 token_unavailable)

_random = secrets.SystemRandom()


def delay(failures: int, rand: Callable[[], float] = _random.random) -> float:
    """Seconds before the next attempt after ``failures`` (>= 1) failures in a row."""
    ceiling = min(CAP, BASE * 2.0 ** min(failures - 1, 16))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass
class Backoff:
    """Per service: failures in a row and when the next attempt may run."""

    clock: Callable[[], float]
    _failures: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def wait_left(self, service: str) -> float:
        """Seconds until ``service`` may mint again (0: now)."""
        return max(0.0, self._until.get(service, 0.0) - self.clock())

    def failed(self, service: str) -> float:
        n = self._failures[service] = self._failures.get(service, 0) + 1
        pause = delay(n)
        self._until[service] = self.clock() + pause
        return pause

    def succeeded(self, service: str) -> None:
        self._failures.pop(service, None)
        self._until.pop(service, None)

    def clear(self) -> None:
        self._failures.clear()
        self._until.clear()
