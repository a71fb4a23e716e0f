"""Contract: the indexed manager production runs calls exactly what mitmproxy's own would.

Both managers get the same chain (plain, async and nested addons, one that fails, one that
halts one event) and every hook mitmproxy defines, fired through ``handle_lifecycle`` (the
path proxy events take) and the synchronous ``trigger``; the calls must be the same, in the
same order, with the same arguments."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.test import tflow

from vaultproxy.seam import speed
from vaultproxy.seam.dispatch import IndexedAddonManager

Call = tuple[str, str, tuple[bool, ...]]
HOOKS = sorted(hooks.all_hooks)
_fired: list[Any] = []  # the arguments of the event being fired


def _recorder(name: str, calls: list[Call], *, is_async: bool = False, fail: str = "",
              halt: str = "") -> Any:
    def make(hook: str) -> Any:
        def record(*args: Any) -> None:
            same = tuple(a is b for a, b in zip(args, _fired, strict=False))
            calls.append((name, hook, same if len(args) == len(_fired) else ()))
            if hook == fail:
                raise RuntimeError(f"{name} fails {hook}")
            if hook == halt:
                raise exceptions.AddonHalt()

        async def record_async(*args: Any) -> None:
            await asyncio.sleep(0)
            record(*args)

        return record_async if is_async and hook not in ("load", "configure") else record

    cls = type(f"Rec_{name}", (), {h: staticmethod(make(h)) for h in HOOKS})
    addon = cls()
    addon.name = name
    return addon


class Parent:
    def __init__(self, name: str, *children: object) -> None:
        self.name = name
        self.addons = list(children)


def _chain(calls: list[Call], *, is_async: bool) -> list[object]:
    return [
        _recorder("a", calls),
        object(),
        Parent("p", _recorder("b", calls), _recorder("c", calls, is_async=is_async)),
        _recorder("d", calls, fail="requestheaders"),
        _recorder("e", calls),
        _recorder("f", calls, halt="response"),
        _recorder("g", calls),
    ]


def _event(name: str, first: Any) -> hooks.Hook:
    cls = hooks.all_hooks[name]
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not fields:
        return cls()
    return cls(first, *[object() for _ in fields[1:]])  # type: ignore[call-arg]


async def _run(indexed: bool, *, is_async: bool, sync: bool, flow_arg: bool) -> list[Call]:
    m = master.Master(options.Options(), with_termlog=False)
    try:
        return await _fire(m, indexed, is_async=is_async, sync=sync, flow_arg=flow_arg)
    finally:  # its log handler would outlive this event loop
        m._legacy_log_events.uninstall()


async def _fire(
    m: master.Master, indexed: bool, *, is_async: bool, sync: bool, flow_arg: bool
) -> list[Call]:
    if indexed:
        m.addons = IndexedAddonManager(m)
    calls: list[Call] = []
    m.addons.add(*_chain(calls, is_async=is_async))
    calls.clear()  # ``load`` ran at add; the contract below is about events
    first = tflow.tflow() if flow_arg else object()
    for name in HOOKS:
        event = _event(name, first)
        _fired[:] = event.args()
        if sync:
            m.addons.trigger(event)
        elif event.args():
            await m.addons.handle_lifecycle(event)
        else:  # ``running``, ``done``: the master triggers these directly
            await m.addons.trigger_event(event)
    # the UpdateHook built per flow event is a fresh list each time: compare its shape only
    return [(a, h, args if h != "update" else ()) for a, h, args in calls]


@pytest.mark.parametrize("flow_arg", [True, False], ids=["flow", "plain"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync-addons", "async-addon"])
def test_indexed_and_stock_make_the_same_calls(flow_arg: bool, is_async: bool) -> None:
    stock = asyncio.run(_run(False, is_async=is_async, sync=False, flow_arg=flow_arg))
    ours = asyncio.run(_run(True, is_async=is_async, sync=False, flow_arg=flow_arg))
    assert {h for _a, h, _args in stock} >= set(HOOKS) - {"update"} or not stock
    assert ours == stock


def test_sync_trigger_makes_the_same_calls() -> None:
    stock = asyncio.run(_run(False, is_async=False, sync=True, flow_arg=True))
    ours = asyncio.run(_run(True, is_async=False, sync=True, flow_arg=True))
    assert ours == stock


def test_every_hook_reaches_the_chain() -> None:
    """The twin of the contract: a chain that records nothing would make both lists equal."""
    calls = asyncio.run(_run(True, is_async=False, sync=False, flow_arg=True))
    assert {h for _a, h, _args in calls} == set(HOOKS)
    assert ("g", "response", ()) not in [(a, h, ()) for a, h, _ in calls]  # f halted it
    assert any(a == "e" and h == "requestheaders" for a, h, _ in calls)  # d failed, e ran


def test_production_manager_is_the_indexed_one() -> None:
    async def go() -> addonmanager.AddonManager:
        m = master.Master(options.Options(), with_termlog=False)
        manager = speed.tune(m)
        m._legacy_log_events.uninstall()  # no-op when tune() did it
        return manager

    assert isinstance(asyncio.run(go()), IndexedAddonManager)


def test_a_missing_symbol_keeps_the_stock_manager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(addonmanager.AddonManager, "_iter_hooks")

    async def go() -> addonmanager.AddonManager:
        m = master.Master(options.Options(), with_termlog=False)
        manager = speed.tune(m)
        m._legacy_log_events.uninstall()  # no-op when tune() did it
        return manager

    manager = asyncio.run(go())
    assert type(manager) is addonmanager.AddonManager
    assert "_iter_hooks" in caplog.text
