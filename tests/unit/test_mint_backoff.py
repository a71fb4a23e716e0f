"""The mint backoff schedule: exponential, capped, jittered within the upper half, reset by a
success (mint/backoff.py)."""

from __future__ import annotations

import pytest

from vaultproxy.mint import backoff
from vaultproxy.mint.backoff import Backoff, delay


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 40])
def test_delay_is_exponential_capped_and_jittered(failures: int) -> None:
    ceiling = min(backoff.CAP, backoff.BASE * 2 ** (failures - 1))
    assert delay(failures, rand=lambda: 0.0) == pytest.approx(ceiling / 2)
    assert delay(failures, rand=lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)
    assert ceiling / 2 <= delay(failures) <= ceiling


def test_failures_extend_the_wait_and_a_success_resets_it() -> None:
    now = [100.0]
    b = Backoff(lambda: now[0])
    assert b.wait_left("svc") == 0.0
    first = b.failed("svc")
    assert 0 < b.wait_left("svc") == pytest.approx(first)
    second = b.failed("svc")
    assert second > first / 2  # the next ceiling doubles
    assert b.wait_left("other") == 0.0  # per service
    now[0] += 31
    assert b.wait_left("svc") == 0.0
    b.succeeded("svc")
    assert b.failed("svc") <= backoff.BASE  # back to the first step
