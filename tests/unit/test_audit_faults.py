"""Audit faults without a proxy (issue 15): a full file system (a real, small tmpfs) never
leaves a torn or duplicate line, keeps the lines it could not write in order and writes
them first when space returns; the policy decides whether a ``forward`` record that cannot
be written is kept; the combined status names the failure; stale files of a killed run are
removed only when provably stale."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vaultproxy.audit import AuditEvent, AuditLog
from vaultproxy.audit import status as audit_status
from vaultproxy.engine.stale import clean_stale
from vaultproxy.files.home import Home


def _event(n: int, event: str = "request") -> AuditEvent:
    return AuditEvent(event=event, service="svc", method="GET", host="svc.test",
                      path=f"/item/{n}", status=200, outcome="injected")


@pytest.fixture
def tiny_fs(tmp_path: Path, canary_watch: Callable[[Path], None]) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_leaves_whole_lines_and_writes_kept_ones_first(tiny_fs: Path) -> None:
    path = tiny_fs / "audit.jsonl"
    audit = AuditLog(path)
    assert audit.record(_event(0))
    filler = _fill(tiny_fs)
    results = [audit.record(_event(n)) for n in range(1, 200)]  # fills the last page, then fails
    assert False in results
    assert not audit.healthy and "ENOSPC" in str(audit.error)
    # What is in the file is whole lines only (a short write was cut back off).
    text = path.read_bytes()
    assert text.endswith(b"\n")
    in_file = [json.loads(line) for line in text.splitlines()]
    filler.unlink()
    assert audit.record(_event(200))  # the kept lines first, then this one
    assert audit.healthy
    lines = path.read_text().splitlines()
    numbers = [int(json.loads(x)["path"].rsplit("/", 1)[1]) for x in lines]
    assert numbers == list(range(201))  # every record once, in order
    assert len(in_file) < 201
    s = audit.stats()
    assert s["written"] == 201 and s["failed"] >= 1 and s["dropped"] == 0 and s["pending"] == 0


@pytest.mark.parametrize("policy", ["deny", "continue"])
def test_a_forward_record_that_cannot_be_written(tiny_fs: Path, policy: str) -> None:
    path = tiny_fs / "audit.jsonl"
    audit = AuditLog(path, on_failure=policy)  # type: ignore[arg-type]
    filler = _fill(tiny_fs)
    ok = [audit.ahead(_event(n, "forward")) for n in range(100)]
    assert False in ok
    filler.unlink()
    audit.flush()
    kept = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    if policy == "deny":  # the request was refused: its forward record must not appear
        assert len(kept) == ok.count(True)
    else:  # it went ahead: its record is written late, not lost
        assert len(kept) == 100


def test_combined_status_names_a_failing_worker(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.record(_event(1))
    try:
        audit_status.set_peers(lambda: [{"written": 5, "failed": 2, "dropped": 0, "pending": 2,
                                         "healthy": False, "error": "OSError ENOSPC"}])
        s = audit_status.combined(audit)
        assert (s["written"], s["failed"], s["pending"], s["healthy"]) == (6, 2, 2, False)
        problem = audit_status.problem(audit)
        assert problem is not None and "ENOSPC" in problem and "refused" in problem
        audit_status.set_peers(lambda: [{"written": 5, "healthy": True}])
        assert audit_status.problem(audit) is None
    finally:
        audit_status.set_peers(None)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_files_of_a_dead_run_are_removed(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    home.run_json.write_text(json.dumps({"pid": _dead_pid()}))
    home.admin_token.write_text("old")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(home.admin_sock))
    dead.close()  # a socket file nothing listens on
    removed = clean_stale(home)
    assert not home.run_json.exists() and not home.admin_token.exists()
    assert not home.admin_sock.exists()
    assert len(removed) == 3


def test_files_of_a_live_owner_are_left_alone(tmp_path: Path) -> None:
    """The twin: a socket something listens on, and a run.json naming a running process."""
    home = Home(tmp_path / "home")
    home.create()
    home.run_json.write_text(json.dumps({"pid": os.getppid()}))
    home.admin_token.write_text("live")
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(home.proxy_sock))
    live.listen(1)
    try:
        assert clean_stale(home) == []
        assert home.run_json.exists() and home.admin_token.exists() and home.proxy_sock.exists()
    finally:
        live.close()
