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

A hook whose function carries ``GUARD`` (stages/guard.py's fail-closed wrappers) is called
without its wrapper: the manager calls the wrapped body itself and, on an exception, the
wrapper's own deny callable, in the same order with the same outcome (one Python frame less
per stage per event; ~20 stage hooks run per proxied request).

``handle_lifecycle`` (every proxied request's four hook phases) runs, per flow event, a step
generated from the chain once (``_unrolled``: ``trigger_event``'s one-argument loop written out
as one block per top-level addon, its ``safecall``, guard and awaitable handling the loop's for
that handler's kind, and the ``update`` event only when some addon has one); it is dropped with
the index. tests/unit/test_speed_r2stages.py compares it to the loop. A guarded body that
declares when it has nothing to do (``IDLE``: a record's field, the stage's attribute) is
called only when its declared test, written inline in the step, says it has work
(tests/unit/test_speed_skip10.py runs each skipped body anyway and compares).

It leans on ``AddonManager._iter_hooks``, ``_configure_all`` and ``cut_traceback``;
``missing_symbol()`` names the first that mitmproxy lost, and seam/speed.py then keeps the
stock manager. tests/unit/test_dispatch_contract.py runs both over every hook."""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import logging
import types
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks

from vaultproxy.seam.need import missing

logger = logging.getLogger(addonmanager.__name__)

#: Per top-level addon, the hook callables of it and its children (chain order).
Handlers = tuple[tuple[Callable[..., Any], ...], ...]

#: The attribute of a hook wrapper that lets the manager run its guard inline:
#: ``(body, fail, guard_awaitable)``. ``body(addon, *args)`` is the hook as written;
#: ``fail(addon, args, err)`` is what the wrapper does with an ``Exception`` the body raised
#: (it must not re-raise what it handled); ``guard_awaitable``: an awaitable the body
#: returns is awaited inside the guard too (else outside it, by the manager, as any
#: handler's). The layering keeps the seam below the stages: this is a protocol, not an
#: import.
GUARD = "__vp_guard__"

#: The attribute of a guarded hook's body that takes the flow's record as a third argument
#: (``body(addon, flow, rec)``): the ``flow.metadata`` key the record lives under. The
#: unrolled step (``_unrolled``) reads that key once per event, until it finds a record
#: (a record, once made, is the flow's for good: stages/flowrecord.py), and hands it to
#: every such body; any other caller (``trigger_event``, mitmproxy's own manager, a test)
#: calls ``body(addon, flow)`` and the body reads the record itself. A protocol, as
#: ``GUARD``.
RECORD = "__vp_record__"

#: The attribute of a guarded hook's body (``GUARD``; not a wrapper's) that says when
#: it returns None at once and changes nothing: ``(owner, name, test)`` triples, ``owner``
#: ``"rec"`` (the flow's record, for a body that takes it: ``RECORD``) or ``"addon"`` (the
#: stage), ``name`` an attribute or a dotted path of them (``"decision.plan.mint"``: each
#: link before the last not None), ``test`` ``"true"`` (the attribute is true) or ``"set"``
#: (it is not None): the body has work only when one of them holds (or, for a body that
#: takes the record, when there is no record yet). A body may have nothing to do in more
#: cases than it declares (it is then called, and returns at once), never in fewer.
#: The unrolled step tests that inline and calls the body only then (stages/flowrecord.py
#: ``idle_unless``). Names are checked identifiers; a triple it cannot read disables the skip
#: for that step (the body is called). A protocol, as ``GUARD``.
IDLE = "__vp_idle__"

#: Tests only: when set as a step is built, each step's skip calls it instead of nothing,
#: as ``check(func, addon, flow, rec)`` (``addon`` None for a plain handler; ``rec`` None
#: for a body that takes no record): it runs the skipped body anyway to prove it had nothing
#: to do (tests/unit/test_speed_skip10.py).
CHECK_SKIPS: Callable[[Any, Any, Any, Any], None] | None = None

#: One handler as the manager runs it: ``(func, addon, fail, guard_awaitable)``. ``fail``
#: None: a plain handler, ``func(*args)``; else ``func`` is a guarded body,
#: ``func(addon, *args)``.
Step = tuple[Callable[..., Any], Any, Callable[[Any, Any, BaseException], None] | None, bool]
Steps = tuple[tuple[Step, ...], ...]
#: An event's field when it has exactly one (else None), and one step per top-level addon.
Flat = tuple[str | None, tuple[Step, ...]]

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


def _step(func: Callable[..., Any]) -> Step:
    """How the manager runs ``func``: its guarded body with the guard inline when it is a
    bound method whose function carries ``GUARD``; else ``func`` itself."""
    function = getattr(func, "__func__", None)
    spec = getattr(function, GUARD, None)
    addon = getattr(func, "__self__", None)
    if spec is None or addon is None or getattr(function, "__wrapped__", None) is not spec[0]:
        # (a decorator over the wrapper that copied its ``__dict__``, as ``functools.wraps``
        # does, carries the inner ``GUARD`` too: that one is called as it is)
        return (func, None, None, False)
    body, fail, guard_awaitable = spec
    return (body, addon, fail, bool(guard_awaitable))


def _grouped(group: tuple[Step, ...]) -> Step:
    """One step for the handlers of an addon and its children (an addon with ``addons``):
    they run in order and an exception a plain one raises ends the group, as inside
    mitmproxy's one ``safecall`` per top-level addon (the caller's ``try`` is that)."""

    async def run(*args: Any) -> None:
        for func, addon, fail, guard_awaitable in group:
            if fail is None:
                res = func(*args)
                if res is not None and (type(res) is _Coroutine or inspect.isawaitable(res)):
                    await res
                continue
            pending = None
            try:
                res = func(addon, *args)
                if res is not None and (type(res) is _Coroutine or inspect.isawaitable(res)):
                    if guard_awaitable:
                        await res
                    else:
                        pending = res
            except Exception as err:  # noqa: BLE001 - the stage's guard: deny
                fail(addon, args, err)
            if pending is not None:
                await pending

    return (run, None, None, False)


#: A chain with more top-level steps than this for one event keeps ``trigger_event``'s loop.
_MAX_UNROLLED = 64


def _go(i: int, spec: object, takes: bool) -> str | None:
    """The source of step ``i``'s test "its body has work" (``IDLE``) from the body's ``spec``,
    or None: no skip (no spec, or one this cannot read)."""
    if not isinstance(spec, tuple) or not spec:
        return None
    terms: list[str] = []
    for triple in spec:
        if not (isinstance(triple, tuple) and len(triple) == 3):
            return None
        owner, attr, test = triple
        if owner not in ("rec", "addon") or test not in ("true", "set"):
            return None
        parts = attr.split(".") if type(attr) is str else []
        if not parts or not all(_identifier(part) for part in parts):
            return None
        if owner == "rec" and not takes:
            return None
        # a dotted name: each link before the last not None, then the last's test
        ref = "rec" if owner == "rec" else f"a{i}"
        links = []
        for part in parts[:-1]:
            ref = f"{ref}.{part}"
            links.append(f"{ref} is not None")
        ref = f"{ref}.{parts[-1]}"
        links.append(ref if test == "true" else f"{ref} is not None")
        terms.append(links[0] if len(links) == 1 else "(" + " and ".join(links) + ")")
    # (a body that takes the record reads it itself, making it, when there is none: only
    # a record that is there lets the step skip it)
    return " or ".join((["rec is None"] if takes else []) + terms)


def _unrolled_source(name: str, field: str | None, top: tuple[Step, ...], update: bool,
                     takes: tuple[bool, ...] = (), goes: tuple[str | None, ...] = (),
                     check: bool = False) -> str:
    """The source of ``handle_lifecycle``'s step for one flow event (one field, ``field``)
    over ``top``: ``trigger_event``'s loop for one argument written out, one block per
    step, each block the loop's body for that step's kind (plain; guarded, its awaitable
    awaited inside the guard or outside it), then, when some addon has an ``update`` hook,
    the ``update`` event. The handlers are the globals ``f<i>``, their addons ``a<i>``, the
    guards' deny callables ``x<i>``. Of the chain and the event, only the hook's name (as
    ``_step_<name>``) and its field's (both checked identifiers) go in: the rest are indices.
    ``field`` None: the same step taking the event's one field itself (``arg``), for a
    caller that has it and so needs no hook object (``flow_steps``). ``takes[i]``: the
    guarded body of step ``i`` takes the flow's record (``RECORD``; its key the global
    ``_rk``), read inside its guard as the body would read it, once found kept for the
    steps after it. ``goes[i]``: the source of step ``i``'s test "the body has work"
    (``_go``): the call is made only when it holds (``check``: else the global ``_check``
    is called, ``CHECK_SKIPS``)."""
    awaitable = "res is not None and (type(res) is _Coroutine or _isawaitable(res))"
    if field is None:
        out = [f"async def {name}(arg):"]
    else:
        out = [f"async def {name}(event):"]
        if top or update:
            out.append(f"    arg = event.{field}")
    if any(takes):
        out.append("    rec = None")
    if top:
        out.append("    try:")
    for i, (_func, _addon, fail, guard_awaitable) in enumerate(top):
        out.append("        try:")
        call = f"f{i}(a{i}, arg)"
        fetch: list[str] = []
        taking = i < len(takes) and takes[i] and fail is not None
        if taking:
            call = f"f{i}(a{i}, arg, rec)"
            fetch = ["                if rec is None:",
                     "                    rec = arg.metadata.get(_rk)"]
        go = goes[i] if i < len(goes) else None
        skipped = [f"_check(f{i}, {'None' if fail is None else f'a{i}'}, arg, "
                   f"{'rec' if taking else 'None'})"] if check else []
        if fail is None:
            body = [f"res = f{i}(arg)",
                    f"if {awaitable}:",
                    "    await res"]
            if go is None:
                out += ["            " + line for line in body]
            else:
                out += [f"            if {go}:",
                        *("                " + line for line in body)]
                if skipped:
                    out += ["            else:", *("                " + x for x in skipped)]
        elif guard_awaitable:
            body = [f"res = {call}",
                    f"if {awaitable}:",
                    "    await res"]
            if go is None:
                inner = ["                " + line for line in body]
            else:
                inner = [f"                if {go}:",
                         *("                    " + line for line in body)]
                if skipped:
                    inner += ["                else:",
                              *("                    " + x for x in skipped)]
            out += ["            try:", *fetch, *inner,
                    "            except Exception as err:",
                    f"                x{i}(a{i}, (arg,), err)"]
        else:
            if go is None:
                inner = [f"                res = {call}"]
            else:
                inner = [f"                if {go}:",
                         f"                    res = {call}",
                         "                else:",
                         "                    res = None",
                         *("                    " + x for x in skipped)]
            out += ["            try:", *fetch, *inner,
                    "            except Exception as err:",
                    f"                x{i}(a{i}, (arg,), err)",
                    "            else:",
                    f"                if {awaitable}:",
                    "                    await res"]
        out += ["        except _Stop:",  # AddonHalt, OptionsError: up (AddonHalt: below)
                "            raise",
                "        except Exception as err:",
                "            _dispatch._addon_error(err)"]
    if top:
        out += ["    except _AddonHalt:",
                "        pass"]
    if update:  # (also after an AddonHalt, as ``trigger_event``'s ``lifecycle``)
        out += ["    if isinstance(arg, _Flow):",
                "        await _manager.trigger_event(_UpdateHook([arg]))"]
    if len(out) == 1:
        out.append("    return None")
    return "\n".join(out) + "\n"


def _unrolled(manager: Any, name: str, field: str, top: tuple[Step, ...], update: bool
              ) -> Callable[[hooks.Hook], Coroutine[Any, Any, None]]:
    """``_unrolled_source`` compiled, its source registered with ``linecache`` (an addon
    error's traceback shows its lines) under a name of its text (a chain rebuilt with the
    same shape meets its entry again: as many entries as shapes, not as rebuilds)."""
    import hashlib
    import linecache
    import sys

    # (prefixed: no hook's name can stand for a global of the step's, nor a builtin)
    fname = f"_step_{name}" if name.isidentifier() else "_step"
    # the guarded bodies that take the flow's record: those of the first key found
    keys = [getattr(func, RECORD, None) if fail is not None else None
            for func, _addon, fail, _guard_awaitable in top]
    key = next((k for k in keys if type(k) is str), None)
    takes = tuple(key is not None and k == key for k in keys)
    # when each body has work (``IDLE``): its call is skipped otherwise
    # (a guarded body's own: not a wrapper's, which may have copied an inner function's
    # ``__dict__`` and do more than it)
    goes = tuple(_go(i, getattr(func, IDLE, None), takes[i])
                 if fail is not None and getattr(func, "__wrapped__", None) is None else None
                 for i, (func, _addon, fail, _guard_awaitable) in enumerate(top))
    check = CHECK_SKIPS
    # (the step, then the same step taking the field itself: ``flow_steps``)
    source = (_unrolled_source(fname, field, top, update, takes, goes, check is not None)
              + "\n\n"
              + _unrolled_source(fname + "_of", None, top, update, takes, goes,
                                 check is not None))
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"<vaultproxy.seam.dispatch unrolled {fname} {digest}>"
    namespace: dict[str, Any] = {
        "__builtins__": __builtins__, "_Coroutine": _Coroutine,
        "_isawaitable": inspect.isawaitable, "_Stop": _STOP,
        "_AddonHalt": exceptions.AddonHalt, "_Flow": flow.Flow, "_UpdateHook": hooks.UpdateHook,
        "_manager": manager, "_dispatch": sys.modules[__name__], "_rk": key,
        "_check": check,
    }
    for i, (func, addon, fail, _guard_awaitable) in enumerate(top):
        namespace[f"f{i}"] = func
        namespace[f"a{i}"] = addon
        namespace[f"x{i}"] = fail
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our text, no input's
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    run: Callable[[hooks.Hook], Coroutine[Any, Any, None]] = namespace[fname]
    run.of_field = namespace[fname + "_of"]  # type: ignore[attr-defined]
    return run


_STOP = (exceptions.AddonHalt, exceptions.OptionsError)


def _identifier(name: str) -> bool:
    """``name`` can stand in the generated source as a name (an attribute, a function)."""
    return name.isidentifier() and not keyword.iskeyword(name)


class IndexedAddonManager(addonmanager.AddonManager):
    def __init__(self, master: Any) -> None:
        super().__init__(master)  # type: ignore[no-untyped-call]
        self._index: dict[str, Handlers] = {}
        self._steps: dict[str, Steps] = {}  # ``_index`` as ``trigger_event`` runs it
        # ``_steps`` with one step per top-level addon (its group folded into one if it
        # has several): the loop for events of one argument
        self._flat: dict[str, Flat] = {}
        # per event name, what ``handle_lifecycle`` runs: ``_unrolled``'s step for a flow
        # event, else ``trigger_event`` with its ``lifecycle``
        self._runs: dict[str, Callable[[hooks.Hook], Coroutine[Any, Any, None]]] = {}
        #: per flow event name whose step is ``_unrolled``'s: that step taking the event's
        #: one field (the flow) itself, ``flow_steps[name](flow)`` running what
        #: ``handle_lifecycle(Hook(flow))`` runs without the hook object and this call
        #: (seam/lean.py's job: five per request). Filled by ``handle_lifecycle``'s first
        #: event of each name; cleared in place (a caller may hold the dict) with the index.
        self.flow_steps: dict[str, Callable[[Any], Coroutine[Any, Any, None]]] = {}

    def _drop(self) -> None:
        """Forget every index (the chain changed)."""
        self._index.clear()
        self._steps.clear()
        self._flat.clear()
        self._runs.clear()
        self.flow_steps.clear()

    def _run_of(self, event: hooks.Hook) -> Callable[[hooks.Hook], Coroutine[Any, Any, None]]:
        field, top = self._flat_of(event)
        update = self._index.get("update")
        if update is None:
            update = self._handlers(hooks.UpdateHook([]))
        run: Callable[[hooks.Hook], Coroutine[Any, Any, None]]
        if field is not None and _identifier(field) and len(top) <= _MAX_UNROLLED:
            run = _unrolled(self, event.name, field, top, bool(update))
            self.flow_steps[event.name] = run.of_field  # type: ignore[attr-defined]
        else:
            def run(event: hooks.Hook) -> Coroutine[Any, Any, None]:
                return self.trigger_event(event, True)
        self._runs[event.name] = run
        return run

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

    def _steps_of(self, event: hooks.Hook) -> Steps:
        steps = self._steps.get(event.name)
        if steps is None:
            handlers = self._index.get(event.name)
            if handlers is None:
                handlers = self._handlers(event)
            steps = self._steps[event.name] = tuple(
                tuple(_step(func) for func in funcs) for funcs in handlers)
        return steps

    def _flat_of(self, event: hooks.Hook) -> Flat:
        flat = self._flat.get(event.name)
        if flat is None:
            hook_args(event)  # (fills ``_arg_names``)
            names = _arg_names[type(event)]
            flat = self._flat[event.name] = (
                names[0] if len(names) == 1 else None,
                tuple(group[0] if len(group) == 1 else _grouped(group)
                      for group in self._steps_of(event)),
            )
        return flat

    async def trigger_event(self, event: hooks.Hook, lifecycle: bool = False) -> None:
        """mitmproxy's ``trigger_event``; ``lifecycle``: then its ``handle_lifecycle``'s
        ``update`` event too (``handle_lifecycle``: one coroutine per hook, not two)."""
        flat = self._flat.get(event.name)
        if flat is None:
            flat = self._flat_of(event)
        field, top = flat
        if not top:
            pass
        elif field is not None:
            # Every flow event has one argument: passed as such, not as ``*args`` (a call
            # the interpreter specialises, instead of a tuple built per handler). One step
            # per top-level addon, its ``safecall`` and (``GUARD``) its stage's own guard
            # inline: this loop runs ~25 handlers per proxied request.
            arg = getattr(event, field)
            for func, addon, fail, guard_awaitable in top:
                try:
                    if fail is None:
                        res = func(arg)
                        if res is not None and (
                                type(res) is _Coroutine or inspect.isawaitable(res)):
                            await res
                        continue
                    try:
                        res = func(addon, arg)
                        if res is None:  # (a stage's common answer: its work is done)
                            continue
                        if guard_awaitable and (
                                type(res) is _Coroutine or inspect.isawaitable(res)):
                            await res
                            continue
                    except Exception as err:  # noqa: BLE001 - the stage's guard: deny
                        fail(addon, (arg,), err)
                        continue
                    # an awaitable outside the guard: awaited as any handler's
                    if type(res) is _Coroutine or inspect.isawaitable(res):
                        await res
                except exceptions.AddonHalt:
                    break
                except exceptions.OptionsError:
                    raise
                except Exception as err:  # noqa: BLE001 - as mitmproxy's safecall: log, go on
                    _addon_error(err)
        else:
            steps = self._steps.get(event.name)
            if steps is None:
                steps = self._steps_of(event)
            args = hook_args(event)
            # events of any other arity: ``_SafeCall`` and the stage guards inlined as above
            for group in steps:
                try:
                    for func, addon, fail, guard_awaitable in group:
                        if fail is None:
                            res = func(*args)
                            if res is not None and (
                                    type(res) is _Coroutine or inspect.isawaitable(res)):
                                await res
                            continue
                        pending = None
                        try:
                            res = func(addon, *args)
                            if res is not None and (
                                    type(res) is _Coroutine or inspect.isawaitable(res)):
                                if guard_awaitable:
                                    await res
                                else:
                                    pending = res
                        except Exception as err:  # noqa: BLE001 - the stage's guard: deny
                            fail(addon, args, err)
                        if pending is not None:
                            await pending
                except exceptions.AddonHalt:
                    break
                except exceptions.OptionsError:
                    raise
                except Exception as err:  # noqa: BLE001 - as mitmproxy's safecall: log, go on
                    _addon_error(err)
        if lifecycle:
            # the rest of mitmproxy's ``handle_lifecycle`` (also after an AddonHalt)
            update = self._index.get("update")
            if update is None:
                update = self._handlers(hooks.UpdateHook([]))
            if update:
                message = hook_args(event)[0]
                if isinstance(message, flow.Flow):
                    await self.trigger_event(hooks.UpdateHook([message]))

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

    def handle_lifecycle(self, event: hooks.Hook) -> Coroutine[Any, Any, None]:
        """mitmproxy's ``handle_lifecycle`` (``trigger_event``, then the ``update`` event of
        a flow's hook if some addon has one) as one coroutine: for a flow event (one
        argument) the chain's unrolled step (``_unrolled``), built once per chain; for any
        other, ``trigger_event``'s own."""
        run = self._runs.get(event.name)
        if run is None:
            run = self._run_of(event)
        return run(event)

    def register(self, addon: Any) -> Any:
        self._drop()
        return super().register(addon)  # type: ignore[no-untyped-call]

    def add(self, *addons: Any) -> None:
        self._drop()
        super().add(*addons)  # type: ignore[no-untyped-call]
        self._drop()

    def remove(self, addon: Any) -> None:
        self._drop()
        super().remove(addon)  # type: ignore[no-untyped-call]
        self._drop()

    def clear(self) -> None:
        self._drop()
        super().clear()  # type: ignore[no-untyped-call]
