"""The audit path's shortcuts say what the general code says: a prebuilt frame header is the
frame ``frame`` builds; ``strip_query``'s early return keeps every path it kept; a
``--workers`` process leaves /metrics counting to the supervisor while a single process
counts its own records (seeded, varied inputs)."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

from vaultproxy.audit import metrics
from vaultproxy.audit.canonical import record_decision
from vaultproxy.audit.event import strip_query
from vaultproxy.audit.log import AuditLog
from vaultproxy.engine.channel import frame, frame_head
from vaultproxy.engine.worker_audit import WorkerAudit


def test_a_prebuilt_frame_header_is_the_frame() -> None:
    rng = random.Random(3)
    for header in ({"op": "audit", "ok": True}, {"op": "audit", "ok": False},
                   {"op": "x", "n": 7, "s": "caf\u00e9 \"q\""}):
        build = frame_head(header)
        for _ in range(200):
            payload = rng.randbytes(rng.randint(0, 300))
            assert build(payload) == frame(header, payload)
            assert build(bytearray(payload)) == frame(header, bytearray(payload))


def _strip_loop(path: str) -> str:
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path


def test_strip_query_is_the_split_loop() -> None:
    rng = random.Random(9)
    pieces = ["/", "a", "?", "#", "%3F", "\u00e9", "?k=v", "#f", "", "\x00", "&"]
    stripped = 0
    for _ in range(20_000):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        assert strip_query(path) == _strip_loop(path), path
        stripped += strip_query(path) != path
    assert 2000 < stripped < 18_000  # twin: both answers are reached


def _flows(service: str) -> float:
    return metrics.FLOWS.labels(service, "injected")._value.get()  # type: ignore[no-any-return]


def _record(log: AuditLog, service: str) -> None:
    record_decision(log, event="request", agent="a", service=service, mode="host_inject",
                    method="GET", host="h.example", path="/x", status=200, started=None,
                    outcome="injected", reason=None)


def test_only_the_process_that_serves_metrics_counts_its_records(tmp_path: Path) -> None:
    single = AuditLog(tmp_path / "single.jsonl")
    before = _flows("svc-single")
    _record(single, "svc-single")
    assert _flows("svc-single") == before + 1  # the twin: a single process counts

    async def worker() -> None:
        a, b = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=a)
        _r, w2 = await asyncio.open_unix_connection(sock=b)
        log = WorkerAudit(tmp_path / "worker.jsonl", writer, asyncio.get_running_loop())
        _record(log, "svc-worker")
        writer.close()
        w2.close()

    before = _flows("svc-worker")
    asyncio.run(worker())
    assert _flows("svc-worker") == before  # the supervisor counts the line it is sent
    assert '"service":"svc-worker"' in (tmp_path / "worker.jsonl").read_text()
