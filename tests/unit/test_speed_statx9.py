"""The audit file's check of every line through libc's ``lstat`` (audit/jsonl_file.py
``_LSTAT``) says what ``os.lstat`` says: the same st_dev, st_ino, st_size, and a failure
exactly where ``os.lstat`` raises, on real files in every state a path can be in (there,
grown, truncated, renamed away, deleted, replaced by another file, a symlink, a dangling
symlink, a symlink loop, a directory, a fifo, under a file (ENOTDIR), under a symlink loop
(ELOOP), too long a name, no search permission); ``write_line`` then makes the same
decisions (the same files, bytes, modes and exceptions) as the code it replaces and as its
own ``os.lstat`` fallback. The fallback is taken whenever libc's ``lstat`` is not there or
does not answer as ``os.lstat`` does (fail closed)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import struct
import sys
from pathlib import Path

import pytest

from vaultproxy.audit import jsonl_file
from vaultproxy.audit.jsonl_file import JsonlFile

_ROOT = os.geteuid() == 0


def _fast(where: bytes, jf: JsonlFile) -> tuple[int, int, int] | None:
    """libc's answer through the file's own buffer: (st_dev, st_ino, st_size) or None."""
    assert jf._lstat is not None
    if jf._lstat(where, jf._at) != 0:
        return None
    return jsonl_file._STAT_FIELDS.unpack_from(jf._stat)  # type: ignore[return-value]


def _reference(where: bytes) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(where)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size


def _clear(p: Path) -> None:
    if p.is_symlink() or p.is_file() or (p.exists() and not p.is_dir()):
        p.unlink()
    elif p.is_dir():
        os.chmod(p, 0o700)
        shutil.rmtree(p)


def _mutate(rng: random.Random, base: Path, n: int) -> str:
    """Put ``base/sub/audit.jsonl`` (and ``sub``) in one of the states a path can be in."""
    sub = base / "sub"
    path = sub / "audit.jsonl"
    if sub.is_dir() and not sub.is_symlink():
        os.chmod(sub, 0o700)
    what = rng.choice(["keep", "keep", "keep", "grow", "truncate", "rename", "delete",
                       "replace", "symlink", "dangling", "loop", "directory", "fifo",
                       "notdir", "subloop", "perm", "restore"])
    if what in ("notdir", "subloop", "restore") or not sub.is_dir() or sub.is_symlink():
        _clear(sub)
        if what == "notdir":
            sub.write_bytes(b"x")  # sub/audit.jsonl: ENOTDIR
            return what
        if what == "subloop":
            sub.symlink_to(sub)  # ELOOP
            return what
        sub.mkdir()
    if what == "grow" and path.is_file() and not path.is_symlink():
        with path.open("ab") as f:
            f.write(b'{"other":1}\n' * rng.randrange(1, 4))
    elif what == "truncate" and path.is_file() and not path.is_symlink():
        os.truncate(path, rng.randrange(0, 3))
    elif what == "rename" and (path.exists() or path.is_symlink()):
        os.replace(path, base / f"away-{n}")
    elif what == "delete":
        _clear(path)
    elif what == "replace":
        fresh = base / "fresh"
        fresh.write_bytes(b'{"other":1}\n' * rng.randrange(0, 3))
        os.chmod(fresh, rng.choice([0o600, 0o644]))
        _clear(path)
        os.replace(fresh, path)
    elif what in ("symlink", "dangling", "loop", "directory", "fifo"):
        _clear(path)
        if what == "symlink":
            target = base / f"target-{n}"
            target.write_bytes(b"t\n")
            path.symlink_to(target)
        elif what == "dangling":
            path.symlink_to(base / "nowhere")
        elif what == "loop":
            path.symlink_to(path)
        elif what == "directory":
            path.mkdir()
        else:
            os.mkfifo(path)
    elif what == "perm":
        os.chmod(sub, 0o000)  # EACCES, unless root (then as "keep")
    return what


def test_libc_lstat_is_there_and_fills_what_is_read() -> None:
    """Not vacuous: on Linux x86_64/aarch64 the fast path is taken."""
    if sys.platform == "linux" and os.uname().machine in ("x86_64", "aarch64"):
        assert jsonl_file._LSTAT is not None
    assert jsonl_file._STAT_FIELDS.size <= jsonl_file._STAT_SIZE


def test_libc_lstat_answers_as_os_lstat_on_every_path(tmp_path: Path) -> None:
    if jsonl_file._LSTAT is None:
        pytest.skip("no libc lstat here: the os.lstat fallback is tested below")
    rng = random.Random(9)
    jf = JsonlFile(tmp_path / "unused.jsonl", max_bytes=100, backups=1)
    seen: set[str] = set()
    failed = answered = 0
    for n in range(600):
        what = _mutate(rng, tmp_path, n)
        seen.add(what)
        for where in (os.fsencode(tmp_path / "sub" / "audit.jsonl"), os.fsencode(tmp_path / "sub"),
                      os.fsencode(tmp_path / "sub" / ("n" * 300))):  # ENAMETOOLONG
            want = _reference(where)
            assert _fast(where, jf) == want, (what, where)
            failed += want is None
            answered += want is not None
    if (tmp_path / "sub").is_dir():
        os.chmod(tmp_path / "sub", 0o700)
    assert len(seen) == 15 and failed > 100 and answered > 100  # twin: both reached


def _old_write_line(self: JsonlFile, data: bytes) -> None:
    """main 6d25ad2's ``JsonlFile.write_line`` (the reference)."""
    try:
        st = os.lstat(self._where)
    except FileNotFoundError:
        fd, size = self._current()
    else:
        if st[1] == self._inode and st[2] == self._dev:
            fd, size = self._fd, st[6]
        else:
            fd, size = self._current()
    length = len(data)
    if size > 0 and size + length > self.max_bytes:
        self._rotate(fd)
        fd, size = self._current()
    written = os.write(fd, data)
    if written != length:
        self._short(fd, written)


class _Old(JsonlFile):
    write_line = _old_write_line


def _tree(base: Path) -> list[tuple[str, str, bytes | str | None, int]]:
    out: list[tuple[str, str, bytes | str | None, int]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(base))
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", os.readlink(p).replace(str(base), "B"), 0))
            elif stat.S_ISREG(st.st_mode):
                out.append((rel, "file", p.read_bytes(), stat.S_IMODE(st.st_mode)))
            else:
                out.append((rel, stat.filemode(st.st_mode)[0], None, 0))
        dirnames.sort()
    return sorted(out)


@pytest.mark.parametrize("fast", [True, False], ids=["libc-lstat", "os-lstat-fallback"])
def test_write_line_decides_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      fast: bool) -> None:
    """Seeded runs: the path (and its directory) put in every state between lines; the new
    ``write_line`` (with libc's lstat, or with it gone: the fallback) against main's, in two
    directories: the same exceptions (type, errno) line by line, the same trees after."""
    if fast and jsonl_file._LSTAT is None:
        pytest.skip("no libc lstat here")
    if not fast:
        monkeypatch.setattr(jsonl_file, "_LSTAT", None)
    rng = random.Random(11 + fast)
    errors: set[object] = set()
    for run in range(6):
        max_bytes, backups = rng.choice([(60, 0), (200, 2), (700, 3), (10_000, 1)])
        dirs = [tmp_path / f"{run}-now", tmp_path / f"{run}-before"]
        for d in dirs:
            (d / "sub").mkdir(parents=True)
        files = [JsonlFile(dirs[0] / "sub" / "audit.jsonl", max_bytes=max_bytes, backups=backups),
                 _Old(dirs[1] / "sub" / "audit.jsonl", max_bytes=max_bytes, backups=backups)]
        assert (files[0]._lstat is not None) is fast
        for n in range(150):
            state = rng.getstate()
            for d in dirs:  # the same doing in both directories
                rng.setstate(state)
                _mutate(rng, d, n)
            text = (f'{{"n":{n},"x":"' + "y" * rng.randrange(0, 120) + '"}\n').encode()
            outcome = []
            for f in files:
                try:
                    f.write_line(text)
                    outcome.append(None)
                except OSError as e:
                    outcome.append((type(e), e.errno))
            assert outcome[0] == outcome[1], n
            errors.add(outcome[0])
        for f in files:
            f.close()
        for d in dirs:
            if (d / "sub").is_dir() and not (d / "sub").is_symlink():
                os.chmod(d / "sub", 0o700)
        assert _tree(dirs[0]) == _tree(dirs[1])
    want = {None, (NotADirectoryError, errno.ENOTDIR), (OSError, errno.ELOOP),
            (IsADirectoryError, errno.EISDIR)}
    if not _ROOT:
        want.add((PermissionError, errno.EACCES))
    assert want <= errors, errors  # twin: every way reached


def test_a_path_with_a_nul_keeps_os_lstat(tmp_path: Path) -> None:
    jf = JsonlFile(tmp_path / "a\0b", max_bytes=100, backups=0)
    assert jf._lstat is None
    with pytest.raises(ValueError):
        jf.write_line(b"x\n")


def test_a_libc_lstat_that_answers_otherwise_is_not_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: a struct layout that does not give os.lstat's fields (another ABI), or
    another system, leaves the fast path out; twin: this one takes it."""
    if jsonl_file._LSTAT is None:
        pytest.skip("no libc lstat here")
    assert jsonl_file._libc_lstat() is not None
    # st_rdev's place, and st_blksize's (4096: the size of "/" as well, so "/" alone
    # would not tell; this module's own size does)
    for wrong in ("=QQ24xq", "=QQ40xq", "=QQ16xq", "=QQ56xq", "=8xQQ32xq"):
        monkeypatch.setattr(jsonl_file, "_STAT_FIELDS", struct.Struct(wrong))
        assert jsonl_file._libc_lstat() is None, wrong
    monkeypatch.undo()
    monkeypatch.setattr(jsonl_file.sys, "platform", "darwin")
    assert jsonl_file._libc_lstat() is None
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "ctypes", None)  # no ctypes: ImportError
    assert jsonl_file._libc_lstat() is None
    monkeypatch.undo()
    assert jsonl_file._libc_lstat() is not None
