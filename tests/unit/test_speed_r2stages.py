"""The hook phases' per-request shortcuts of session 12, round 2 (``r2-stages``) answer
exactly as the code they replace, on seeded input; the code before each shortcut is kept here
as the reference.

* ``IndexedAddonManager.handle_lifecycle``: the step generated per flow event (one block per
  top-level addon, the ``update`` event baked in when some addon has one) against
  ``trigger_event``'s loop with its ``lifecycle`` tail, over plain, guarded (awaitable inside
  or outside the guard) and grouped handlers (an addon with children), addons without the
  hook, with and without an ``update`` hook, and every outcome (None, a value, an awaitable
  that returns, raises, halts or raises OptionsError, a raise, a halt, an OptionsError);
  a chain that changes makes a new step (the twin: a stale step would miss the new addon).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import types
from typing import Any

import pytest
from mitmproxy import exceptions, flow, hooks, master, options
from mitmproxy.test import tflow

from tests.unit.test_speed_stages3 import _BEHAVIOURS, _KINDS, _addon
from vaultproxy.seam import dispatch


async def _reference_lifecycle(am: dispatch.IndexedAddonManager, event: hooks.Hook) -> None:
    """``handle_lifecycle`` before ``r2-stages``: ``trigger_event(event, True)`` with its
    one-argument loop (as ``stages3`` left it) and the ``update`` tail."""
    field, top = am._flat_of(event)
    assert field is not None
    if top:
        arg = getattr(event, field)
        for func, addon, fail, guard_awaitable in top:
            try:
                if fail is None:
                    res = func(arg)
                    if res is not None and (
                            type(res) is types.CoroutineType or inspect.isawaitable(res)):
                        await res
                    continue
                try:
                    res = func(addon, arg)
                    if res is None:
                        continue
                    if guard_awaitable and (
                            type(res) is types.CoroutineType or inspect.isawaitable(res)):
                        await res
                        continue
                except Exception as err:  # noqa: BLE001
                    fail(addon, (arg,), err)
                    continue
                if type(res) is types.CoroutineType or inspect.isawaitable(res):
                    await res
            except exceptions.AddonHalt:
                break
            except exceptions.OptionsError:
                raise
            except Exception as err:  # noqa: BLE001
                dispatch._addon_error(err)
    update = am._index.get("update")
    if update is None:
        update = am._handlers(hooks.UpdateHook([]))
    if update:
        message = dispatch.hook_args(event)[0]
        if isinstance(message, flow.Flow):
            await am.trigger_event(hooks.UpdateHook([message]))


class _Parent:
    def __init__(self, name: str, *children: object) -> None:
        self.name = name
        self.addons = list(children)


class _Updates:
    def __init__(self, log: list[tuple[object, ...]]) -> None:
        self.log = log

    def update(self, flows: list[Any]) -> None:
        self.log.append(("update", len(flows)))


def _chain(rng: random.Random, log: list[tuple[object, ...]]) -> tuple[list[object], set[Any]]:
    seen: set[Any] = set()
    chain: list[object] = []
    for i in range(rng.randint(0, 6)):
        what = rng.random()
        if what < 0.1:
            chain.append(type(f"N{i}", (), {})())  # no hook at all
            seen.add("none")
        elif what < 0.25:
            shapes = [(rng.choice(_KINDS), rng.choice(_BEHAVIOURS)) for _ in range(2)]
            chain.append(_Parent(f"p{i}", *[_addon(100 * (i + 1) + j, k, b, log)
                                            for j, (k, b) in enumerate(shapes)]))
            seen.add("group")
        else:
            shape = (rng.choice(_KINDS), rng.choice(_BEHAVIOURS))
            chain.append(_addon(i, *shape, log))
            seen.add(shape)
    if rng.random() < 0.3:
        chain.insert(rng.randint(0, len(chain)), _Updates(log))
        seen.add("update")
    return chain, seen


def test_the_unrolled_step_is_trigger_events_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261207)
    log: list[tuple[object, ...]] = []
    monkeypatch.setattr(dispatch, "_addon_error",
                        lambda err: log.append(("error", type(err).__name__, str(err))))
    seen: set[Any] = set()
    unrolled = 0

    async def go() -> None:
        nonlocal unrolled
        for _ in range(800):
            chain, shapes = _chain(rng, log)
            seen.update(shapes)
            m = master.Master(options.Options(), with_termlog=False)
            try:
                am = dispatch.IndexedAddonManager(m)
                m.addons = am
                am.add(*chain)
                f = tflow.tflow()
                outcomes = []
                for which in ("unrolled", "reference", "unrolled"):
                    log.clear()
                    event = hooks.all_hooks["requestheaders"](f)
                    try:
                        if which == "unrolled":
                            await am.handle_lifecycle(event)
                        else:
                            await _reference_lifecycle(am, event)
                        raised = None
                    except exceptions.OptionsError as err:
                        raised = ("OptionsError", str(err))
                    outcomes.append((list(log), raised))
                assert outcomes[0] == outcomes[1] == outcomes[2], chain
                run = am._runs["requestheaders"]
                unrolled += run.__code__.co_filename.startswith(
                    "<vaultproxy.seam.dispatch unrolled _step_requestheaders ")
            finally:
                m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert {"none", "group", "update"} <= seen
    assert len(seen) == 3 + len(_KINDS) * len(_BEHAVIOURS)
    assert unrolled == 800


def test_a_changed_chain_makes_a_new_step() -> None:
    log: list[tuple[object, ...]] = []

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            am = dispatch.IndexedAddonManager(m)
            m.addons = am
            first = _addon(1, "plain", "none", log)
            am.add(first)
            f = tflow.tflow()
            await am.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
            assert log == [("called", 1)]
            am.add(_addon(2, "guarded", "none", log), _Updates(log))
            log.clear()
            await am.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
            assert log == [("called", 1), ("called", 2), ("update", 1)]
            am.remove(first)
            log.clear()
            await am.handle_lifecycle(hooks.all_hooks["requestheaders"](f))
            assert log == [("called", 2), ("update", 1)]
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())


def test_an_addon_error_is_logged_as_mitmproxys(caplog: pytest.LogCaptureFixture) -> None:
    """The real ``_addon_error``: one "Addon error" record with the exception, from the
    unrolled step as from the loop."""
    log: list[tuple[object, ...]] = []

    async def go() -> list[tuple[str, str, type[BaseException] | None]]:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            am = dispatch.IndexedAddonManager(m)
            m.addons = am
            am.add(_addon(1, "plain", "raise", log), _addon(2, "guarded", "coro_raise", log))
            got = []
            for run in (am.handle_lifecycle, lambda e: _reference_lifecycle(am, e)):
                caplog.clear()
                with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
                    await run(hooks.all_hooks["requestheaders"](tflow.tflow()))
                got.append([(r.levelname, r.getMessage(),
                             r.exc_info[0] if r.exc_info else None) for r in caplog.records])
            assert got[0] == got[1]
            assert len(got[0]) == 2 and got[0][0][1] == "Addon error: 1"
            return got[0]
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())


def test_a_hook_named_as_a_global_of_the_step_is_still_its_event() -> None:
    """The generated step's name comes from the hook's: a hook named ``isinstance`` or
    ``f0`` must shadow neither the builtin the ``update`` tail calls nor a handler."""
    log: list[tuple[object, ...]] = []
    made: list[str] = []
    try:
        for hook_name in ("isinstance", "f0", "arg"):
            cls = dataclasses.dataclass(type(
                f"Odd{hook_name.title()}Hook", (hooks.Hook,),
                {"__annotations__": {"flow": flow.Flow}, "name": hook_name}))
            made.append(hook_name)
            addon = type("Odd", (), {hook_name: lambda self, f: log.append(("odd", f.id))})()

            async def go(cls: Any = cls, addon: Any = addon) -> None:
                m = master.Master(options.Options(), with_termlog=False)
                try:
                    am = dispatch.IndexedAddonManager(m)
                    m.addons = am
                    am.add(addon, _Updates(log))
                    f = tflow.tflow()
                    log.clear()
                    await am.handle_lifecycle(cls(f))
                    assert log == [("odd", f.id), ("update", 1)]
                finally:
                    m._legacy_log_events.uninstall()

            asyncio.run(go())
    finally:
        for hook_name in made:
            hooks.all_hooks.pop(hook_name, None)


def test_an_addon_errors_traceback_shows_the_steps_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    log: list[tuple[object, ...]] = []

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            am = dispatch.IndexedAddonManager(m)
            m.addons = am
            am.add(_addon(1, "plain", "raise", log))
            with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
                await am.handle_lifecycle(hooks.all_hooks["requestheaders"](tflow.tflow()))
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert "res = f0(arg)" in caplog.text
