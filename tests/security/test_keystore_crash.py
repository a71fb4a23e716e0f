"""Threat: a crash (power loss, kill -9) in the middle of a write. A writer subprocess is
SIGKILLed at random moments a few hundred times; the keystore must always open and hold
exactly the state before or after the save that was interrupted (same for the .bak)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.keystore_writer import FAST, expected, password
from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import Keystore, store
from vaultproxy.secret import Secret

pytestmark = [pytest.mark.security, pytest.mark.slow]
WRITER = Path(__file__).resolve().parents[1] / "keystore_writer.py"
LANES = 3
TRIALS_PER_LANE = 100  # 300 kills in total


def _open_state(path: Path) -> tuple[int, str]:
    """(state number, password env name) of the file; fails the test if neither opens."""
    for name in ("KS_PW0", "KS_PW1"):
        try:
            ks = Keystore.open(path, Secret(os.environ[name]))
        except KeystoreError as e:
            assert "wrong master password" in str(e), f"{path.name} unreadable: {e}"
            continue
        counter = ks.get("counter")
        assert counter is not None and counter.value is not None
        k = int(counter.value.reveal_str())
        got = {n: x.value.reveal_str() for n in ks.names() if (x := ks.get(n)) and x.value}
        assert got == expected(k), f"{path.name}: state {k} has the wrong entries"
        return k, name
    raise AssertionError(f"{path.name} opens with neither password")


def _trial(server: subprocess.Popen[str], path: Path) -> tuple[int, int]:
    """One kill; returns (saves this writer reported, 1 if the kill cut a save short after
    its rename, else 0)."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("go\n")
    server.stdin.flush()
    pid, start, lines = None, None, []
    while pid is None or start is None:
        line = server.stdout.readline()
        assert line, "writer server died"
        if line.startswith("pid "):
            pid = int(line.split()[1])
        elif line.startswith("ready "):
            start = int(line.split()[1])
        else:
            lines.append(line)
    time.sleep(secrets.randbelow(60_000) / 1e6)
    os.kill(pid, signal.SIGKILL)
    while (line := server.stdout.readline()) != "dead\n":
        assert line, "writer server died"
        lines.append(line)
    out = "".join(lines)
    done = [int(x) for x in out.split()]
    last = done[-1] if done else start
    k, pw_name = _open_state(path)
    assert k in (last, last + 1), f"found state {k}, writer had completed {last}"
    assert pw_name == f"KS_PW{(k // 3) % 2}", f"state {k} is under the wrong password"
    bak = path.with_name(path.name + ".bak")
    if bak.exists():
        bak_k, _ = _open_state(bak)
        assert bak_k <= k
    return last - start, k - last


def _server(home: Path, unsafe: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "KS_UNSAFE": "1" if unsafe else "0"}
    with (home.parent / f"{home.name}-writer.err").open("w") as err:
        return subprocess.Popen([sys.executable, str(WRITER), str(home / "keystore.enc")],
                                text=True, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)


def _lane(home: Path, results: list[tuple[int, int]], errors: list[BaseException]) -> None:
    server = _server(home)
    try:
        for _ in range(TRIALS_PER_LANE):
            results.append(_trial(server, home / "keystore.enc"))
    except BaseException as e:  # reported by the main thread
        errors.append(e)
    finally:
        server.kill()
        server.communicate()


def _make_home(home: Path, canary_watch: Callable[[Path], None]) -> Path:
    home.mkdir(mode=0o700)
    canary_watch(home)
    ks = Keystore.create(home / "keystore.enc", Secret(password(0)), FAST)
    for name, value in expected(0).items():
        ks.set_value(name, Secret(value))
    ks.save()
    (home / "keystore.enc.bak").unlink()  # the empty keystore is no state of ours
    return home


@pytest.fixture
def writer_env(monkeypatch: pytest.MonkeyPatch, canary: Callable[[], str]) -> None:
    monkeypatch.setenv("KS_CANARY", canary())
    monkeypatch.setenv("KS_PW0", canary())
    monkeypatch.setenv("KS_PW1", canary())
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)  # as the writer does: cheap opens


def test_negative_twin_in_place_writes_are_caught(
    tmp_path: Path, writer_env: None, canary_watch: Callable[[Path], None],
) -> None:
    """The same harness catches a writer that rewrites the file in place."""
    home = _make_home(tmp_path / "unsafe", canary_watch)
    server = _server(home, unsafe=True)
    caught = 0
    try:
        for _ in range(60):
            try:
                _trial(server, home / "keystore.enc")
            except (AssertionError, KeystoreError):
                caught += 1
                break
    finally:
        server.kill()
        server.communicate()
    assert caught, "60 kills of an in-place writer went unnoticed; the harness is blind"


def test_sigkill_during_writes_never_corrupts(
    tmp_path: Path, writer_env: None, canary_watch: Callable[[Path], None],
) -> None:
    homes = [_make_home(tmp_path / f"home{i}", canary_watch) for i in range(LANES)]
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_lane, args=(h, results, errors)) for h in homes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert len(results) == LANES * TRIALS_PER_LANE
    saves = sum(n for n, _ in results)
    cut_after_rename = sum(d for _, d in results)
    # Negative control for the harness: the kills did land inside saves, and writers did
    # make progress between kills (otherwise this test would prove nothing).
    assert saves >= 100, f"only {saves} saves completed"
    assert cut_after_rename >= 1, "no kill landed between a rename and its report"
    # Leftover temps from killed writers are 0600 and never named keystore.enc.
    for home in homes:
        for p in home.iterdir():
            assert p.stat().st_mode & 0o077 == 0, p.name
