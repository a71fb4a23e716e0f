"""The skip check of seam/dispatch.py ``CHECK_SKIPS``: every hook body the unrolled step
skipped (its ``IDLE`` test said it had nothing to do) is run anyway, right there, on the
flow, record and stage the step had; it must return None, raise nothing and change nothing
it can reach (the flow's request and response as objects and fields, its error, state and
metadata, the record, the stage's attributes and containers, the runtime's tunnels and the
in-flight count). What it notes names hooks and fields only, never a value (the flows carry
canary secrets).

Used in-process by tests/unit/test_speed_skip10.py and, through a ``sitecustomize``, inside
the real proxy by tests/integration/test_skip10.py (``install``)."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json
from typing import Any


def _shallow(obj: Any) -> dict[str, Any]:
    """An object's attributes, each container copied (an object by identity)."""
    try:
        items = vars(obj).items()
    except TypeError:
        return {}
    out: dict[str, Any] = {}
    for k, v in items:
        if type(v) in (dict, collections.OrderedDict):
            out[k] = ("dict", tuple((kk, id(vv)) for kk, vv in v.items()))
        elif type(v) in (set, frozenset):
            out[k] = ("set", frozenset(id(x) for x in v))
        elif type(v) is list:
            out[k] = ("list", tuple(id(x) for x in v))
        elif type(v) in (int, float, bool, str, bytes, type(None), tuple):
            out[k] = ("value", v)
        else:
            out[k] = ("object", id(v))
    return out


def _message(msg: Any) -> Any:
    if msg is None:
        return None
    return (id(msg), _shallow(msg), _shallow(msg.data), tuple(msg.data.headers.fields),
            msg.data.trailers and tuple(msg.data.trailers.fields))


def state(flow: Any, rec: Any, addon: Any) -> Any:
    """What a hook body could change, as comparable values."""
    rt = getattr(addon, "rt", None)
    connections = getattr(rt, "connections", None)
    live = getattr(getattr(rt, "live", None), "state", None)
    return (
        _shallow(flow), _message(flow.request), _message(flow.response),
        flow.error and _shallow(flow.error),
        tuple((k, id(v)) for k, v in flow.metadata.items()),
        rec is not None and _shallow(rec),
        rec is not None and tuple((f.name, id(getattr(rec, f.name, None)))
                                  for f in dataclasses.fields(rec)),
        addon is not None and _shallow(addon),
        connections is not None and _shallow(connections),
        # (the flow's own tunnel's attributes; every tunnel's identity)
        connections is not None and _shallow(
            getattr(connections, "tunnels", {}).get(flow.client_conn.id)),
        connections is not None and tuple(
            (k, id(v)) for k, v in getattr(connections, "tunnels", {}).items()),
        live is not None and getattr(live, "inflight", None),
    )


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff(x, y, f"{path}[{i}]")
        return out
    return [path or "."]


class SkipCheck:
    """``dispatch.CHECK_SKIPS``: runs each skipped body and notes what it did."""

    def __init__(self) -> None:
        self.skipped: collections.Counter[str] = collections.Counter()
        self.wrong: list[tuple[str, str]] = []

    def __call__(self, func: Any, addon: Any, flow: Any, rec: Any) -> None:
        name = getattr(func, "__qualname__", repr(func))
        self.skipped[name] += 1
        before = state(flow, rec, addon)
        try:
            res = (func(addon, flow, rec) if rec is not None else
                   func(addon, flow) if addon is not None else func(flow))
        except BaseException as err:  # noqa: BLE001 - noted: a skipped body must not raise
            self.note(name, f"raised {type(err).__name__}")
            return
        if res is not None:
            if inspect.iscoroutine(res):
                res.close()
            self.note(name, f"returned {type(res).__name__}")
        changed = _diff(before, state(flow, rec, addon))
        if changed:
            self.note(name, "changed " + ", ".join(changed[:5]))

    def note(self, name: str, what: str) -> None:
        self.wrong.append((name, what))


def install(path: str) -> SkipCheck:
    """A ``SkipCheck`` as ``dispatch.CHECK_SKIPS`` that writes each failure to ``path`` (a
    line of JSON) as it happens, and the skip counts so far to ``path + ".counts"`` after
    each skip (a proxy stopped by a signal has written them all)."""
    from vaultproxy.seam import dispatch

    class Writing(SkipCheck):
        def __call__(self, func: Any, addon: Any, flow: Any, rec: Any) -> None:
            super().__call__(func, addon, flow, rec)
            with open(path + ".counts", "w") as f:
                f.write(json.dumps(dict(self.skipped)))

        def note(self, name: str, what: str) -> None:
            super().note(name, what)
            with open(path, "a") as f:
                f.write(json.dumps([name, what]) + "\n")

    check = Writing()
    dispatch.CHECK_SKIPS = check
    return check


