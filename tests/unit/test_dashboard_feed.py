"""The dashboard's audit feed: records from any thread reach live subscribers in order;
per-minute counts by service and outcome; only the audit record's own fields are kept."""

from __future__ import annotations

import asyncio
import json
import threading

from vaultproxy.dashboard.feed import AuditFeed


def _line(**kw: object) -> str:
    return json.dumps({"ts": "2026-01-01T00:00:00Z", "event": "request", **kw}) + "\n"


def test_records_from_another_thread_reach_subscribers_in_order() -> None:
    async def main() -> list[str]:
        feed = AuditFeed()
        feed.bind(asyncio.get_running_loop())
        q = feed.subscribe()
        t = threading.Thread(target=lambda: [feed.offer(_line(path=f"/{i}")) for i in range(5)])
        t.start()
        t.join()
        got = [(await asyncio.wait_for(q.get(), 2)) for _ in range(5)]
        feed.close()
        assert await q.get() is None  # close ends every stream
        return [str(r["path"]) for r in got if r]

    assert asyncio.run(main()) == ["/0", "/1", "/2", "/3", "/4"]


def test_per_minute_and_recent() -> None:
    feed = AuditFeed()
    feed.offer(_line(service="a", outcome="injected"))
    feed.offer(_line(service="b", outcome="denied"))
    feed.offer(_line(event="admin", path="/v1/lock"))  # not a request: not shown, not counted
    feed.offer("not json\n")
    by_service, by_outcome = feed.per_minute()
    assert len(by_service) == 60 and by_service[-1] == {"a": 1, "b": 1}
    assert by_outcome[-1] == {"injected": 1, "denied": 1}
    assert [r["service"] for r in feed.recent()] == ["a", "b"]


def test_only_audit_fields_are_kept() -> None:
    feed = AuditFeed()
    feed.offer(_line(service="a", extra="dropped"))
    assert "extra" not in feed.records[0]


def test_records_from_the_loop_and_another_thread_keep_their_order() -> None:
    """On the loop's own thread a record is queued without waking the loop (``call_soon``);
    it still reaches subscribers in order with the ones other threads hand over."""

    async def main() -> list[str]:
        feed = AuditFeed()
        feed.bind(asyncio.get_running_loop())
        q = feed.subscribe()
        feed.offer(_line(path="/loop-0"))
        t = threading.Thread(target=lambda: feed.offer(_line(path="/thread")))
        t.start()
        t.join()
        feed.offer(_line(path="/loop-1"))
        got = [(await asyncio.wait_for(q.get(), 2)) for _ in range(3)]
        feed.close()
        return [str(r["path"]) for r in got if r]

    assert asyncio.run(main()) == ["/loop-0", "/thread", "/loop-1"]
