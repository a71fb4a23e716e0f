"""IndexedAddonManager: the same semantics as mitmproxy's AddonManager, only cheaper."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, log, master, options
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from vaultproxy.seam.dispatch import IndexedAddonManager, hook_args


class Rec:
    def __init__(self, name: str, calls: list[str], fail: BaseException | None = None) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def requestheaders(self, flow: Any) -> None:
        self.calls.append(self.name)
        if self.fail is not None:
            raise self.fail


class AsyncRec(Rec):
    async def requestheaders(self, flow: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.calls.append(self.name)


class Parent:
    def __init__(self, *children: object) -> None:
        self.addons = list(children)


class Updates:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def update(self, flows: Any) -> None:
        self.seen.append(flows)


class AddLog:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def add_log(self, entry: log.LogEntry) -> None:
        self.entries.append(entry.msg)


async def _manager(*addons: object) -> IndexedAddonManager:
    m = master.Master(options.Options(), with_termlog=False)
    am = IndexedAddonManager(m)
    m.addons = am
    am.add(*addons)
    return am


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_calls_only_implementers_in_chain_order_with_children() -> None:
    calls: list[str] = []

    async def go() -> None:
        am = await _manager(
            Rec("a", calls), object(), Parent(Rec("b", calls), AsyncRec("c", calls))
        )
        await am.trigger_event(hooks.all_hooks["requestheaders"](tflow.tflow()))

    run(go())
    assert calls == ["a", "b", "c"]


def test_error_is_logged_and_next_addon_runs(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    async def go() -> None:
        am = await _manager(Rec("a", calls, RuntimeError("kaput")), Rec("b", calls))
        with caplog.at_level(logging.ERROR):
            await am.trigger_event(hooks.all_hooks["requestheaders"](tflow.tflow()))

    run(go())
    assert calls == ["a", "b"]
    assert "Addon error: kaput" in caplog.text


def test_error_in_child_skips_its_siblings_not_the_next_addon() -> None:
    calls: list[str] = []

    async def go() -> None:
        am = await _manager(
            Parent(Rec("a", calls, RuntimeError("x")), Rec("a2", calls)), Rec("b", calls)
        )
        await am.trigger_event(hooks.all_hooks["requestheaders"](tflow.tflow()))

    run(go())
    assert calls == ["a", "b"]  # as mitmproxy: one safecall per top-level addon


def test_addon_halt_stops_the_event() -> None:
    calls: list[str] = []

    async def go() -> None:
        am = await _manager(Rec("a", calls, exceptions.AddonHalt()), Rec("b", calls))
        await am.trigger_event(hooks.all_hooks["requestheaders"](tflow.tflow()))

    run(go())
    assert calls == ["a"]


def test_options_error_propagates() -> None:
    async def go() -> None:
        am = await _manager(Rec("a", [], exceptions.OptionsError("bad")))
        await am.trigger_event(hooks.all_hooks["requestheaders"](tflow.tflow()))

    with pytest.raises(exceptions.OptionsError):
        run(go())


def test_sync_trigger_uses_the_index_and_reaches_add_log() -> None:
    async def go() -> tuple[AddLog, IndexedAddonManager]:
        sink = AddLog()
        am = await _manager(Rec("a", []), sink)
        am.trigger(log.AddLogHook(log.LogEntry("hello", "info")))
        return sink, am

    sink, am = run(go())
    assert sink.entries[0] == "hello"  # (mitmproxy may log a deprecation note after it)
    am.trigger(log.AddLogHook(log.LogEntry("again", "info")))
    assert sink.entries[-1] == "again"


def test_update_event_only_when_implemented() -> None:
    async def go(with_updates: bool) -> Updates:
        up = Updates()
        am = await _manager(Rec("a", []), *([up] if with_updates else []))
        await am.handle_lifecycle(hooks.all_hooks["requestheaders"](tflow.tflow()))
        return up

    assert len(run(go(True)).seen) == 1
    assert run(go(False)).seen == []


def test_index_follows_chain_changes() -> None:
    calls: list[str] = []

    async def go() -> None:
        a, b = Rec("a", calls), Rec("b", calls)
        am = await _manager(a)
        ev = hooks.all_hooks["requestheaders"](tflow.tflow())
        await am.trigger_event(ev)
        am.add(b)
        await am.trigger_event(ev)
        am.remove(a)
        await am.trigger_event(ev)

    run(go())
    assert calls == ["a", "a", "b", "b"]


def test_hook_args_matches_mitmproxy() -> None:
    f = tflow.tflow()
    ev = hooks.all_hooks["requestheaders"](f)
    assert hook_args(ev) == ev.args()
    data = server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)
    ev2 = server_hooks.ServerConnectHook(data)
    assert hook_args(ev2) == ev2.args()
