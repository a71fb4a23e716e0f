"""How a speed patch decides that a stock method is still the one it was written against
(seam/need.py ``unchanged``): the compiled form first (``code_fingerprint``, no source file
read at start-up), the source text when that differs or on another CPython's bytecode. A
changed method differs in both and keeps the stock method (the patches' own tests:
tests/unit/test_speed_connio.py, test_speed_tlsio.py, test_lean_events.py)."""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from vaultproxy.seam import connio, lean, need, tlsio


def _compile(src: str, name: str = "f") -> Callable[..., Any]:
    space: dict[str, Any] = {"contextlib": contextlib}
    exec(compile(textwrap.dedent(src), "<test>", "exec"), space)  # noqa: S102 - test code
    return space[name]  # type: ignore[no-any-return]


BASE = """
def f(self, x, *, y=3):
    if x in {"a", "b", "c"}:
        return [v + 1 for v in x.values]
    g = lambda z: z * 2
    return self.call(x, (1, 2.5, b"x"), g)
"""
# each differs from BASE in one thing a behaviour depends on
CHANGED = [
    BASE.replace('"c"', '"d"'),
    BASE.replace("v + 1", "v + 2"),
    BASE.replace("z * 2", "z * 3"),
    BASE.replace("y=3", "y=4"),
    BASE.replace("self.call", "self.calls"),
    BASE.replace("2.5", "2.25"),
    BASE.replace("return [v", "return tuple([v").replace("values]", "values])"),
    BASE.replace("def f(self, x, *, y=3)", "def f(self, x, y=3)"),
    "@contextlib.contextmanager\n" + BASE.replace("return self", "yield self"),
    # (the same decorator, a different body: the wrapped function's code counts)
    "@contextlib.contextmanager\n" + BASE.replace("return self", "yield self").replace(
        "z * 2", "z * 5"),
]


def test_the_code_fingerprint_sees_each_change() -> None:
    base = need.code_fingerprint(_compile(BASE))
    seen = {base}
    for src in CHANGED:
        got = need.code_fingerprint(_compile(src))
        assert got not in seen, src
        seen.add(got)


def test_the_code_fingerprint_ignores_lines_and_comments() -> None:
    moved = "\n\n\n# a comment\n" + BASE.replace("    g = ", "    # why\n    g = ")
    assert need.code_fingerprint(_compile(moved)) == need.code_fingerprint(_compile(BASE))


def test_the_code_fingerprint_is_the_same_in_every_process() -> None:
    """A frozenset constant's order follows the process's string hash seed."""
    prog = ("import textwrap; from vaultproxy.seam import need; s = {}\n"
            f"exec(compile(textwrap.dedent({BASE!r}), '<t>', 'exec'), s)\n"
            "print(need.code_fingerprint(s['f']))")
    got = {subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
           for seed in ("1", "2", "3")}
    assert len(got) == 1 and got != {""}, got


def test_unchanged_asks_the_source_only_when_the_code_differs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fn = _compile(BASE)
    code, source = need.code_fingerprint(fn), "0" * 16
    read: list[Any] = []
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda f: read.append(f) or real(f))
    assert need.unchanged(fn, source, code) and not read  # the code matched: no source read
    # a CPython that compiles it differently: the source decides (here: it differs)
    assert not need.unchanged(fn, source, "1" * 16) and read
    monkeypatch.setattr(need, "_MAGIC", "00000000")  # another CPython: the source decides
    assert not need.unchanged(fn, source, code)


def test_unchanged_with_the_right_source_on_another_bytecode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fn = connio._target("ConnectionHandler.server_event")
    want = connio.FINGERPRINTS["ConnectionHandler.server_event"]
    monkeypatch.setattr(need, "_MAGIC", "00000000")
    assert need.unchanged(fn, want, "whatever")
    assert not need.unchanged(fn, "0" * 16, connio.CODE_FINGERPRINTS[
        "ConnectionHandler.server_event"])


def test_start_up_reads_no_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every patch's check, as install runs it, decided by the code fingerprints alone."""
    if not need.code_magic_matches():
        pytest.skip("another CPython's bytecode: the source fingerprints decide")

    def refuse(fn: Any) -> str:
        raise AssertionError(f"source read: {fn}")

    monkeypatch.setattr(inspect, "getsource", refuse)
    from mitmproxy.proxy import layer

    for name, want in connio.FINGERPRINTS.items():
        assert need.unchanged(connio._target(name), want, connio.CODE_FINGERPRINTS[name])
    for name, want in [*tlsio.FINGERPRINTS.items(),
                       *((f"TunnelLayer.{n}", w) for n, w in tlsio.TUNNEL_FINGERPRINTS.items())]:
        assert tlsio._unchanged(name, want), name
    for name, want in lean.EVENT_FINGERPRINTS.items():
        assert need.unchanged(getattr(layer.Layer, name), want,
                              lean.EVENT_CODE_FINGERPRINTS[name]), name
    from mitmproxy.proxy import server

    stock = lean.STOCK.get("hook_task", server.ConnectionHandler.hook_task)
    assert need.unchanged(stock, lean.HOOK_TASK_FINGERPRINT, lean.HOOK_TASK_CODE_FINGERPRINT)
    from mitmproxy import flow

    from vaultproxy.seam import objects

    assert need.unchanged(flow.Flow.__init__, *objects.FLOW_INIT_FINGERPRINT)


def test_a_changed_hook_task_is_not_taken_for_mitmproxys() -> None:
    """The twin of the lean hook task's check: a ``hook_task`` with one step more (what a
    mitmproxy upgrade could bring) matches neither fingerprint, so install() keeps it."""
    from mitmproxy.proxy import server

    stock = lean.STOCK.get("hook_task", server.ConnectionHandler.hook_task)
    assert need.unchanged(stock, lean.HOOK_TASK_FINGERPRINT, lean.HOOK_TASK_CODE_FINGERPRINT)

    async def hook_task(self: Any, hook: Any) -> None:
        await self.handle_hook(hook)
        if hook.blocking:
            self.log("one step more")

    assert not need.unchanged(hook_task, lean.HOOK_TASK_FINGERPRINT,
                              lean.HOOK_TASK_CODE_FINGERPRINT)


def test_may_install_is_the_switch_and_the_symbols(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The gate of clienthello/options/tlsstart's ``install``: on by default; off by its
    environment switch (no warning); off with one WARNING naming a missing symbol."""
    import logging

    from vaultproxy.seam.need import may_install

    log = logging.getLogger("test.may_install")
    monkeypatch.delenv("VP_TEST_SWITCH", raising=False)
    assert may_install("VP_TEST_SWITCH", lambda: None, log, "it stays")
    for off in ("0", "false", "no", "off", " off "):
        monkeypatch.setenv("VP_TEST_SWITCH", off)
        assert not may_install("VP_TEST_SWITCH", lambda: None, log, "it stays")
    monkeypatch.setenv("VP_TEST_SWITCH", "1")
    assert may_install("VP_TEST_SWITCH", lambda: None, log, "it stays")
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        assert not may_install("VP_TEST_SWITCH", lambda: "Thing.gone", log, "it stays")
    assert [r.getMessage() for r in caplog.records] == [
        "mitmproxy has no Thing.gone: it stays (slower)"]
