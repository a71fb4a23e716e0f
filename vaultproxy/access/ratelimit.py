"""``rate_limit = "120/min"``: a token bucket per (agent, service). Pure, injectable clock.

A bucket holds up to N requests and refills at N per period, so an agent may burst N at once
and then goes at the configured rate; the N+1-th request inside the window is refused with
the number of seconds until one more is allowed (the ``Retry-After``). The owner of the
buckets is one process (the supervisor with ``--workers N``), so the limit is per agent
across every worker."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*([a-z]+)\s*$")
MAX_BUCKETS = 100_000  # distinct (agent, service) pairs kept; idle full ones go first


class RateSyntax(ValueError):
    pass


@dataclass(frozen=True)
class Rate:
    count: int
    period: float  # seconds

    @property
    def per_second(self) -> float:
        return self.count / self.period


def parse_rate(text: str) -> Rate:
    """``"120/min"`` -> Rate(120, 60.0); RateSyntax names what is wrong (never echoes)."""
    m = _RATE.match(text)
    if m is None:
        raise RateSyntax('must look like "120/min" (a count, "/", and s, min, hour or day)')
    count, unit = int(m.group(1)), m.group(2)
    if unit not in UNITS:
        raise RateSyntax('the unit must be one of s, min, hour, day (e.g. "120/min")')
    if count < 1:
        raise RateSyntax("the count must be at least 1")
    return Rate(count, UNITS[unit])


class RateBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, agent: str | None, service: str, rate: Rate) -> float | None:
        """Spend one request; None if allowed, else the seconds until one is."""
        now = self.clock()
        key = (agent or "", service)
        tokens, at = self._buckets.get(key, (float(rate.count), now))
        tokens = min(float(rate.count), tokens + (now - at) * rate.per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._prune(now, rate)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate.per_second

    def _prune(self, now: float, rate: Rate) -> None:
        full = [k for k, (t, at) in self._buckets.items()
                if t + (now - at) * rate.per_second >= rate.count]
        for k in full[: len(self._buckets) - MAX_BUCKETS // 2]:
            del self._buckets[k]


def retry_after(seconds: float) -> int:
    """The ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
