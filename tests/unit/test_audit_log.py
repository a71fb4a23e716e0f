"""AuditLog: one whole-line write per record, 0600 file, rotation (also with several writer
processes' logs on one file), failure handling and retry order, flusher, threads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultproxy.audit import AuditEvent, AuditLog, rotated_path


def _event(n: int, service: str = "openai", **extra: object) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "event": "request",
            "service": service,
            "method": "GET",
            "host": "api.openai.com",
            "path": f"/v1/item/{n}",
            "status": 200,
            "outcome": "allowed",
            **extra,
        }
    )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _numbers(records: list[dict[str, object]]) -> list[int]:
    return [int(str(r["path"]).rsplit("/", 1)[1]) for r in records]


@pytest.fixture
def audit_path(tmp_path: Path, canary_watch: Callable[[Path], None]) -> Path:
    canary_watch(tmp_path)
    return tmp_path / "audit.jsonl"


def test_a_record_is_in_the_file_when_record_returns(audit_path: Path) -> None:
    audit = AuditLog(audit_path)
    assert audit.record(_event(1)) is True
    assert _numbers(_lines(audit_path)) == [1]  # no flush: nothing is held in memory
    assert audit.buffered == 0
    assert audit.stats() == {"written": 1, "failed": 0, "dropped": 0, "pending": 0,
                             "healthy": True, "error": None}


def test_file_is_created_0600_even_with_a_lax_umask(audit_path: Path) -> None:
    old = os.umask(0)
    try:
        audit = AuditLog(audit_path)
        audit.record(_event(1))
        audit.flush()
    finally:
        os.umask(old)
    assert _mode(audit_path) == 0o600


def test_existing_lax_file_is_tightened_with_a_warning(
    audit_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit_path.write_text('{"old":1}\n')
    os.chmod(audit_path, 0o644)
    audit = AuditLog(audit_path)
    with caplog.at_level(logging.WARNING, logger="vaultproxy.audit"):
        audit.record(_event(1))
    assert _mode(audit_path) == 0o600
    assert any("0644" in r.getMessage() for r in caplog.records)
    assert len(_lines(audit_path)) == 2  # appended, never truncated


def test_lines_are_appended_across_instances(audit_path: Path) -> None:
    for n in range(3):
        audit = AuditLog(audit_path)
        audit.record(_event(n))
        audit.close()
    assert _numbers(_lines(audit_path)) == [0, 1, 2]


def test_rotation_keeps_every_record_up_to_backups(audit_path: Path) -> None:
    line_size = len(_event(100).to_json_line())
    audit = AuditLog(audit_path, max_bytes=line_size * 3, backups=5)
    for n in range(100, 110):  # 10 lines, 3 per file -> current + .1 .. .3
        audit.record(_event(n))
        audit.flush()  # one line per flush: rotation decided line by line
    files = [rotated_path(audit_path, i) for i in range(4)]
    assert all(f.exists() for f in files)
    assert not rotated_path(audit_path, 4).exists()
    for f in files:
        assert _mode(f) == 0o600
        assert f.stat().st_size <= line_size * 3
    oldest_first = [rec for f in reversed(files) for rec in _lines(f)]
    assert _numbers(oldest_first) == list(range(100, 110))


def test_rotation_in_one_big_flush(audit_path: Path) -> None:
    line_size = len(_event(100).to_json_line())
    audit = AuditLog(audit_path, max_bytes=line_size * 4, backups=2)
    for n in range(100, 110):
        audit.record(_event(n))
    audit.flush()
    files = [rotated_path(audit_path, i) for i in range(3)]
    assert [len(_lines(f)) for f in files] == [2, 4, 4]
    oldest_first = [rec for f in reversed(files) for rec in _lines(f)]
    assert _numbers(oldest_first) == list(range(100, 110))


def test_rotation_drops_only_beyond_backups(audit_path: Path) -> None:
    line_size = len(_event(100).to_json_line())
    audit = AuditLog(audit_path, max_bytes=line_size * 2, backups=2)
    for n in range(100, 110):
        audit.record(_event(n))
    audit.flush()
    assert not rotated_path(audit_path, 3).exists()
    files = [rotated_path(audit_path, i) for i in range(3)]
    oldest_first = [rec for f in reversed(files) for rec in _lines(f)]
    assert _numbers(oldest_first) == list(range(104, 110))  # newest 6 = 3 files x 2


def test_rotation_with_no_backups_starts_a_fresh_file(audit_path: Path) -> None:
    line_size = len(_event(100).to_json_line())
    audit = AuditLog(audit_path, max_bytes=line_size * 2, backups=0)
    for n in range(100, 105):
        audit.record(_event(n))
    audit.flush()
    assert not rotated_path(audit_path, 1).exists()
    assert _numbers(_lines(audit_path)) == [104]


def test_a_line_larger_than_max_bytes_still_gets_written(audit_path: Path) -> None:
    audit = AuditLog(audit_path, max_bytes=10, backups=1)
    audit.record(_event(1))
    audit.record(_event(2))
    audit.flush()
    assert _numbers(_lines(audit_path)) == [2]
    assert _numbers(_lines(rotated_path(audit_path, 1))) == [1]


def test_failed_write_keeps_lines_and_logs_no_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: Callable[[], str]
) -> None:
    secret = canary()
    missing_dir = tmp_path / "not-yet"
    path = missing_dir / "audit.jsonl"
    audit = AuditLog(path)
    with caplog.at_level(logging.DEBUG, logger="vaultproxy.audit"):
        assert audit.record(_event(1, reason=secret)) is False  # must not raise
    assert audit.buffered == 1
    assert not audit.healthy
    assert "FileNotFoundError" in caplog.text
    assert secret not in caplog.text
    missing_dir.mkdir()
    audit.record(_event(2))
    assert _numbers(_lines(path)) == [1, 2]
    assert audit.buffered == 0
    assert audit.healthy
    path.unlink()  # the canary lives in this file on purpose


def test_symlinked_audit_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    audit = AuditLog(link)
    audit.record(_event(1))
    audit.flush()
    assert target.read_text() == ""
    assert audit.buffered == 1


def test_buffer_is_bounded_and_drops_oldest(
    audit_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    later = audit_path.parent / "later"
    audit = AuditLog(later / "audit.jsonl", max_buffered=10)
    for n in range(15):
        audit.record(_event(n))  # every write fails: the directory is not there yet
    assert audit.buffered == 10
    assert audit.dropped == 5
    later.mkdir()
    with caplog.at_level(logging.WARNING, logger="vaultproxy.audit"):
        audit.flush()
    assert _numbers(_lines(later / "audit.jsonl")) == list(range(5, 15))
    assert "5 dropped" in caplog.text
    assert audit.stats()["written"] == 10 and audit.stats()["failed"] == 15


def test_retry_lines_are_written_before_newer_ones(tmp_path: Path) -> None:
    d = tmp_path / "later"
    audit = AuditLog(d / "audit.jsonl", max_buffered=4)
    for n in range(3):
        audit.record(_event(n))
    audit.flush()  # fails, keeps 0..2
    for n in range(3, 6):
        audit.record(_event(n))  # bound 4: 0 and 1 dropped
    d.mkdir()
    audit.flush()
    assert _numbers(_lines(d / "audit.jsonl")) == [2, 3, 4, 5]
    assert audit.dropped == 2


def test_torn_last_line_does_not_swallow_the_next_record(audit_path: Path) -> None:
    audit_path.write_text('{"partial":')
    os.chmod(audit_path, 0o600)
    audit = AuditLog(audit_path)
    audit.record(_event(7))
    audit.flush()
    lines = audit_path.read_text().splitlines()
    assert lines[0] == '{"partial":'
    assert json.loads(lines[1])["path"] == "/v1/item/7"


def test_record_never_raises_on_a_broken_event(audit_path: Path) -> None:
    class Broken(AuditEvent):
        def to_json_line(self) -> str:
            raise RuntimeError("boom")

    audit = AuditLog(audit_path)
    assert audit.record(Broken(event="request", outcome="ok")) is False
    assert audit.dropped == 1
    assert audit.buffered == 0


def test_echo_writes_new_lines_to_stdout(
    audit_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = AuditLog(audit_path, echo=True)
    audit.record(_event(1))
    audit.flush()
    out = capsys.readouterr().out
    assert json.loads(out)["path"] == "/v1/item/1"
    assert _numbers(_lines(audit_path)) == [1]


def test_flusher_retries_kept_lines_within_a_second_and_on_cancel(tmp_path: Path) -> None:
    later = tmp_path / "later"
    audit_path = later / "audit.jsonl"
    audit = AuditLog(audit_path)

    async def scenario() -> tuple[list[int], list[int]]:
        task = asyncio.create_task(audit.run_flusher())
        audit.record(_event(1))  # fails: kept
        assert audit.buffered == 1
        later.mkdir()
        await asyncio.sleep(1.3)
        seen_by_timer = _numbers(_lines(audit_path)) if audit_path.exists() else []
        audit.record(_event(2))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen_by_timer, _numbers(_lines(audit_path))

    by_timer, after_cancel = asyncio.run(scenario())
    assert by_timer == [1]
    assert after_cancel == [1, 2]


def test_flusher_sleeps_without_a_timer_until_another_thread_keeps_a_line(
    tmp_path: Path,
) -> None:
    """Nothing kept: the flusher waits with no timer (an idle proxy is not woken once a
    second). A line kept by another thread wakes it, and the retry comes ``interval`` after
    it. Twin: a kept line is in the file after that, not before."""
    later = tmp_path / "later"
    audit_path = later / "audit.jsonl"
    audit = AuditLog(audit_path)

    async def scenario() -> tuple[list[object], list[int], list[int]]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(audit.run_flusher(0.2))
        await asyncio.sleep(0.05)
        idle_timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        await asyncio.to_thread(audit.record, _event(1))  # fails: kept, from a thread
        later.mkdir()
        assert audit.buffered == 1
        before = _numbers(_lines(audit_path)) if audit_path.exists() else []
        await asyncio.sleep(0.4)
        after = _numbers(_lines(audit_path))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return idle_timers, before, after

    idle_timers, before, after = asyncio.run(scenario())
    assert idle_timers == []
    assert before == []
    assert after == [1]


def test_flusher_refuses_a_non_positive_interval(audit_path: Path) -> None:
    with pytest.raises(ValueError):
        asyncio.run(AuditLog(audit_path).run_flusher(0))


@pytest.mark.parametrize("max_bytes", [10 * 1024 * 1024, 20_000])
def test_threads_record_concurrently(audit_path: Path, max_bytes: int) -> None:
    threads_n, per_thread = 8, 1000
    audit = AuditLog(audit_path, max_bytes=max_bytes, backups=1000)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            audit.flush()

    def worker(t: int) -> None:
        for n in range(per_thread):
            audit.record(_event(t * per_thread + n, service=f"svc{t}"))

    background = threading.Thread(target=flusher)
    background.start()
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    background.join()
    audit.close()

    files = [p for p in audit_path.parent.iterdir() if p.name.startswith("audit.jsonl")]
    records = [rec for f in files for rec in _lines(f)]  # json.loads fails on a torn line
    assert len(records) == threads_n * per_thread
    assert sorted(_numbers(records)) == list(range(threads_n * per_thread))
    assert audit.dropped == 0
    for t in range(threads_n):  # each thread's own records keep their order
        mine = [r for f in sorted(files, key=_age, reverse=True) for r in _lines(f)
                if r["service"] == f"svc{t}"]  # fmt: skip
        assert _numbers(mine) == list(range(t * per_thread, (t + 1) * per_thread))


def _age(path: Path) -> int:
    suffix = path.name.removeprefix("audit.jsonl")
    return int(suffix[1:]) if suffix else 0


def test_logs_of_several_processes_share_one_file_and_its_rotation(audit_path: Path) -> None:
    """Each --workers process has its own AuditLog on the same audit.jsonl: whole lines,
    each writer's records in its order, every record kept across rotations by either."""
    line_size = len(_event(1000).to_json_line())
    logs = [AuditLog(audit_path, max_bytes=line_size * 5, backups=100) for _ in range(3)]
    for n in range(1000, 1060):
        logs[n % 3].record(_event(n, service=f"svc{n % 3}"))
    files = sorted((p for p in audit_path.parent.iterdir() if p.name.startswith("audit.jsonl")),
                   key=_age, reverse=True)
    records = [r for f in files for r in _lines(f)]  # json.loads fails on a torn line
    assert sorted(_numbers(records)) == list(range(1000, 1060))
    assert _numbers(records) == list(range(1000, 1060))  # one thread: global order too
    assert all(f.stat().st_size <= line_size * 5 for f in files)
    assert all(log.stats()["failed"] == 0 for log in logs)


def test_a_tap_removed_or_added_while_a_line_is_handed_out_changes_nothing_for_that_line(
    audit_path: Path,
) -> None:
    """``add_tap``/``remove_tap`` replace the list: the line being handed out goes to every
    tap of the list it started with. (Editing the list in place, a tap that removes itself
    made the next tap miss that line.) Twin: the next line sees the new list."""
    audit = AuditLog(audit_path)
    got: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def a(line: str) -> None:
        got["a"].append(json.loads(line)["path"])
        audit.remove_tap(a)
        audit.add_tap(c)

    def b(line: str) -> None:
        got["b"].append(json.loads(line)["path"])

    def c(line: str) -> None:
        got["c"].append(json.loads(line)["path"])

    audit.add_tap(a)
    audit.add_tap(b)
    audit.record(_event(1))
    audit.record(_event(2))
    assert got == {"a": ["/v1/item/1"], "b": ["/v1/item/1", "/v1/item/2"], "c": ["/v1/item/2"]}
    audit.remove_tap(a)  # (not a tap any more: nothing)
    assert audit.taps == [b, c]


@pytest.mark.parametrize("change", ["rename", "delete", "replace"])
def test_a_file_moved_away_by_anyone_is_noticed_on_the_next_record(
    audit_path: Path, change: str
) -> None:
    """The check of every line (jsonl_file.py): once the path names another inode, or none
    (an operator's ``mv``, ``rm`` or logrotate's rename-and-create, between two records of
    one request), the very next record goes to a file at the path, never into the old inode
    (a deleted one would lose it). Twin: with nothing changed, both go to the one file."""
    audit = AuditLog(audit_path)
    assert audit.record(_event(1))
    old = audit_path.with_name("audit.old")
    if change == "rename":
        audit_path.rename(old)
    elif change == "delete":
        audit_path.unlink()
    else:
        audit_path.rename(old)
        audit_path.write_text("")  # a fresh file put in its place
        os.chmod(audit_path, 0o600)
    assert audit.record(_event(2))
    assert _numbers(_lines(audit_path)) == [2]
    if change != "delete":
        assert _numbers(_lines(old)) == [1]
    assert _mode(audit_path) == 0o600
    same = AuditLog(audit_path.with_name("twin.jsonl"))
    same.record(_event(3))
    same.record(_event(4))
    assert _numbers(_lines(audit_path.with_name("twin.jsonl"))) == [3, 4]


class _BeforeJsonlFile:
    """audit/jsonl_file.py ``write_line`` as it was (the reference): the path's ``lstat``
    by its ``str`` text, ``st_ino``/``st_dev``/``st_size`` read by name."""

    @staticmethod
    def make(path: Path, max_bytes: int, backups: int) -> object:
        from vaultproxy.audit.jsonl_file import JsonlFile

        class Before(JsonlFile):
            def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
                super().__init__(path, max_bytes=max_bytes, backups=backups)
                self._where = os.fspath(path)  # type: ignore[assignment]

            def write_line(self, data: bytes) -> None:
                import errno

                try:
                    st = os.lstat(self._where)
                except FileNotFoundError:
                    st = None
                fd = self._fd
                if (st is not None and fd >= 0 and st.st_ino == self._inode
                        and st.st_dev == self._dev):
                    size = st.st_size
                else:
                    fd, size = self._current()
                length = len(data)
                if size > 0 and size + length > self.max_bytes:
                    self._rotate(fd)
                    fd, _size = self._current()
                written = os.write(fd, data)
                if written != length:
                    self._cut_back(fd, written)
                    raise OSError(errno.ENOSPC, "short write to the audit log; line removed")

        return Before(path, max_bytes=max_bytes, backups=backups)


def test_write_line_writes_what_it_wrote_before(tmp_path: Path) -> None:
    """``JsonlFile.write_line`` (the path's ``lstat`` by its bytes, the stat's fields by
    place) against the code it replaces, on seeded runs: lines of every length around
    ``max_bytes``, and between them another process's doing (the file moved away, replaced
    by a new file with or without text, removed, a lax mode, a torn last line), with
    several ``backups``: the same files with the same bytes, every one of them."""
    import random

    from vaultproxy.audit.jsonl_file import JsonlFile

    rng = random.Random(67)
    rotated = 0
    for run in range(12):
        max_bytes, backups = rng.choice([(60, 0), (200, 2), (700, 3), (10_000, 1)])
        dirs = [tmp_path / f"{run}-now", tmp_path / f"{run}-before"]
        for d in dirs:
            d.mkdir()
        files = [JsonlFile(dirs[0] / "audit.jsonl", max_bytes=max_bytes, backups=backups),
                 _BeforeJsonlFile.make(dirs[1] / "audit.jsonl", max_bytes, backups)]
        moved = replaced = 0
        for n in range(300):
            what = rng.random()
            text = (f'{{"n":{n},"x":"' + "y" * rng.randrange(0, 120) + '"}\n').encode()
            extra = rng.randrange(0, 3)
            for d in dirs:  # another process's doing, the same in both directories
                path = d / "audit.jsonl"
                if what < 0.05 and path.exists():
                    os.replace(path, d / f"away-{n}")
                elif what < 0.09:
                    fresh = d / "fresh"
                    fresh.write_bytes(b'{"other":1}\n' * extra + (b"torn" if extra == 2 else b""))
                    os.chmod(fresh, 0o644 if extra else 0o600)
                    os.replace(fresh, path)
                elif what < 0.11 and path.exists():
                    path.unlink()
            moved += what < 0.05
            replaced += 0.05 <= what < 0.09
            for f in files:
                f.write_line(text)  # type: ignore[attr-defined]
        for f in files:
            f.close()  # type: ignore[attr-defined]
        rotated += len([p for p in dirs[0].iterdir() if p.name.startswith("audit.jsonl.")])
        names = [sorted(p.name for p in d.iterdir()) for d in dirs]
        assert names[0] == names[1]
        for name in names[0]:
            assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
            assert _mode(dirs[0] / name) == _mode(dirs[1] / name), name
        assert moved and replaced  # twin: both reached
    assert rotated > 10
