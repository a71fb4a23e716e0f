"""Hook dispatch indexed by hook name, for the embedded Master (a speed patch of the seam).

mitmproxy's AddonManager.trigger_event walks every addon in the chain for every event (plus an
`update` event after each flow event), creating a coroutine and a safecall context per addon
even when the addon has no such hook: ~40% of the proxy's CPU on a 1 KB request. This manager
resolves, once per hook name, which addons implement it and calls only those, in chain order,
with the same per-addon error handling as mitmproxy's ``safecall`` (an exception is logged as
"Addon error" and the next addon still runs; AddonHalt stops the event; OptionsError
propagates). The index is dropped whenever the chain changes (add, remove, register, clear).

The same index serves the synchronous ``trigger`` (mitmproxy's legacy ``add_log`` event is
fired through it for every log record: with no addon implementing ``add_log`` it now costs one
dict lookup instead of a walk over the chain) and ``handle_lifecycle`` (the ``update`` event
is only built when some addon implements it).

It leans on ``AddonManager._iter_hooks``, ``_configure_all`` and ``cut_traceback``;
``missing_symbol()`` names the first that mitmproxy lost, and seam/speed.py then keeps the
stock manager. tests/unit/test_dispatch_contract.py runs both over every hook."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks

from vaultproxy.seam.need import missing

logger = logging.getLogger(addonmanager.__name__)

#: Per top-level addon, the hook callables of it and its children (chain order).
Handlers = tuple[tuple[Callable[..., Any], ...], ...]

_arg_names: dict[type[hooks.Hook], tuple[str, ...]] = {}


def hook_args(event: hooks.Hook) -> list[Any]:
    """``event.args()`` without ``dataclasses.fields`` on every call."""
    names = _arg_names.get(type(event))
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(event))  # type: ignore[arg-type]
        _arg_names[type(event)] = names
    return [getattr(event, n) for n in names]


def _addon_error(err: Exception) -> None:
    """What mitmproxy's ``safecall`` does with an addon's exception: log it, carry on."""
    tb = addonmanager.cut_traceback(err.__traceback__, "invoke_addon")  # type: ignore[no-untyped-call]
    logger.error(f"Addon error: {err}", exc_info=(type(err), err, tb))


class _SafeCall:
    """mitmproxy's ``safecall`` around one top-level addon, as a plain class (no generator
    per call): an exception is logged and the next addon runs; AddonHalt and OptionsError
    go on up (the caller stops the event on AddonHalt)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: object) -> bool:
        if err is None or not isinstance(err, Exception):
            return False
        if isinstance(err, exceptions.AddonHalt | exceptions.OptionsError):
            return False
        _addon_error(err)
        return True


_SAFECALL = _SafeCall()
_Coroutine = types.CoroutineType


def missing_symbol() -> str | None:
    """What this manager needs of mitmproxy that it no longer has (None: all there)."""
    return missing(addonmanager, "cut_traceback", "AddonManager") or missing(
        addonmanager.AddonManager, "_iter_hooks", "_configure_all", "trigger_event", "trigger"
    )


class IndexedAddonManager(addonmanager.AddonManager):
    def __init__(self, master: Any) -> None:
        super().__init__(master)  # type: ignore[no-untyped-call]
        self._index: dict[str, Handlers] = {}

    def _handlers(self, event: hooks.Hook) -> Handlers:
        found = self._index.get(event.name)
        if found is None:
            groups = []
            for top in self.chain:
                funcs = tuple(func for _a, func in self._iter_hooks(top, event))
                if funcs:
                    groups.append(funcs)
            found = self._index[event.name] = tuple(groups)
        return found

    def _plan(self, event: hooks.Hook) -> tuple[Handlers, list[Any]]:
        """The event's handler groups (chain order) and its arguments (none if no handler)."""
        handlers = self._index.get(event.name)
        if handlers is None:
            handlers = self._handlers(event)
        return handlers, hook_args(event) if handlers else []

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers, args = self._plan(event)
        # ``_SafeCall`` inlined (this loop runs ~25 handlers per proxied request)
        for funcs in handlers:
            try:
                for func in funcs:
                    res = func(*args)
                    if res is not None and (type(res) is _Coroutine or inspect.isawaitable(res)):
                        await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as err:  # noqa: BLE001 - as mitmproxy's safecall: log, go on
                _addon_error(err)

    def trigger(self, event: hooks.Hook) -> None:
        handlers, args = self._plan(event)
        try:
            for funcs in handlers:
                with _SAFECALL:
                    for func in funcs:
                        if inspect.iscoroutinefunction(func):
                            raise exceptions.AddonManagerError(
                                f"Async handler {event.name} ({func}) cannot be called "
                                "from sync context"
                            )
                        func(*args)
        except exceptions.AddonHalt:
            return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        update = self._index.get("update")
        if update is None:
            update = self._handlers(hooks.UpdateHook([]))
        if update:
            message = hook_args(event)[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))

    def register(self, addon: Any) -> Any:
        self._index.clear()
        return super().register(addon)  # type: ignore[no-untyped-call]

    def add(self, *addons: Any) -> None:
        self._index.clear()
        super().add(*addons)  # type: ignore[no-untyped-call]
        self._index.clear()

    def remove(self, addon: Any) -> None:
        self._index.clear()
        super().remove(addon)  # type: ignore[no-untyped-call]
        self._index.clear()

    def clear(self) -> None:
        self._index.clear()
        super().clear()  # type: ignore[no-untyped-call]
