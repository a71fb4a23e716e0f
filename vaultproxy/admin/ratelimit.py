"""Per-caller limits: a token bucket (``/proxy``) and exponential backoff after failed
unlocks. Pure and clock-injectable; callers are opaque strings. Tables are bounded."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaultproxy.errors import RateLimited

Clock = Callable[[], float]
MAX_CALLERS = 4096


class TooFast(RateLimited):
    def __init__(self, retry_after: float) -> None:
        super().__init__("too many requests; retry later")
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBucket:
    """``rate`` requests per second, bursts up to ``burst``, per caller."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str) -> None:
        """Spend one token or raise TooFast (with the seconds until the next one)."""
        now = self.clock()
        b = self._buckets.pop(caller, None) or _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        self._buckets[caller] = b
        _bound(self._buckets)
        if b.tokens < 1.0:
            raise TooFast((1.0 - b.tokens) / self.rate)
        b.tokens -= 1.0


@dataclass
class _Failures:
    count: int
    until: float


class Backoff:
    """After the n-th consecutive failure a caller waits ``base * 2**(n-1)`` s (capped)."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, clock: Clock = time.monotonic):
        self.base, self.cap, self.clock = base, cap, clock
        self._state: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, caller: str) -> None:
        f = self._state.get(caller)
        if f is not None and self.clock() < f.until:
            raise TooFast(f.until - self.clock())

    def failed(self, caller: str) -> float:
        f = self._state.pop(caller, None) or _Failures(0, 0.0)
        f.count += 1
        delay = float(min(self.cap, self.base * 2.0 ** min(f.count - 1, 30)))
        f.until = self.clock() + delay
        self._state[caller] = f
        _bound(self._state)
        return delay

    def succeeded(self, caller: str) -> None:
        self._state.pop(caller, None)


def _bound(table: OrderedDict[str, Any]) -> None:
    while len(table) > MAX_CALLERS:
        table.popitem(last=False)
