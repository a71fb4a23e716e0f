"""The overload meter logs at most one line per interval, with the counts since the last one,
and one line when an episode ends (seam/accept.py); the reserve scales with the limit."""

from __future__ import annotations

import logging

import pytest

from vaultproxy.seam.accept import REFUSAL, Meter, reserve_for


def test_one_line_per_interval_however_many_refusals(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    m = Meter(256, interval=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="vaultproxy.overload"):
        for _ in range(100_000):  # a flood within one interval
            m.note(refused=1)
            now[0] += 0.00001
        assert len(caplog.records) == 1  # twin of the spin: 100k events, one line
        now[0] = 6.0
        m.note(refused=1, paused=True)
        assert len(caplog.records) == 2
        assert "100000 connection(s) refused" in caplog.records[1].getMessage()  # 99999 + 1
        assert "accept paused 1 time(s)" in caplog.records[1].getMessage()
        now[0] = 12.0
        m.ok()  # accepting normally again: the episode's last line
        m.ok()
    assert len(caplog.records) == 3 and caplog.records[2].getMessage().startswith("recovered")
    assert m.total_refused == 100_001


def test_the_reserve_and_the_refusal() -> None:
    assert reserve_for(160) == 20 and reserve_for(64) == 16 and reserve_for(1 << 20) == 128
    head, _, body = REFUSAL.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"x-vaultproxy-error: overloaded" in head
    assert b'"code": "overloaded"' in body
