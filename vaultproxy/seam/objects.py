"""Cheaper construction of mitmproxy's per-request objects (speed patches of the seam).

* Every hook object (``Hook.__new__``, and ``StartHook.__new__`` before it for the
  connection handler's hooks) re-checks that its class is a concrete dataclass on every
  instantiation: 6-8 per proxied request. ``install`` keeps that check for a class's first
  instance and remembers the classes that passed; an instance of one of them is then made
  as the check would have made it (``object.__new__``). A class that fails still raises
  mitmproxy's own TypeError, every time.
* Every flow gets ``str(uuid.uuid4())`` as its id (``Flow.__init__``): a UUID object built
  and validated, then formatted. ``uuid4_text`` makes the same text from the same 16 random
  bytes (``os.urandom``), with the version and variant bits set as ``uuid.UUID`` sets them;
  ``install`` gives mitmproxy's flow module a ``uuid`` whose ``uuid4()`` returns it (``str``
  of a string is the string). tests/unit/test_speed_objects.py compares both with the stock
  ones.

Each part checks that mitmproxy still has what it changes; if not, that part stays
mitmproxy's own (seam/speed.py logs one WARNING)."""

from __future__ import annotations

import os
import types
import uuid
from typing import Any

from mitmproxy import flow, hooks
from mitmproxy.proxy import commands

from vaultproxy.seam.need import missing

_made_before: set[type] = set()  # hook classes whose first instance passed the check


def uuid4_text(raw: bytes | None = None) -> str:
    """``str(uuid.uuid4())``, or of ``uuid.UUID(bytes=raw, version=4)`` for 16 given bytes."""
    b = bytearray(os.urandom(16) if raw is None else raw)
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _checked_once(stock: Any) -> Any:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls in _made_before:
            return object.__new__(cls)
        made = stock(cls, *args, **kwargs)  # mitmproxy's checks (raise for a bad class)
        _made_before.add(cls)
        return made

    return staticmethod(__new__)


def missing_symbol() -> str | None:
    """What these patches need of mitmproxy that it no longer has (None: all there)."""
    symbol = missing(hooks, "Hook") or missing(commands, "StartHook") or missing(flow, "uuid")
    if symbol is None and ("__new__" not in vars(hooks.Hook)
                           or "__new__" not in vars(commands.StartHook)):
        symbol = "Hook.__new__"
    if symbol is None and getattr(getattr(flow, "uuid", None), "uuid4", None) is not uuid.uuid4:
        symbol = "flow.uuid.uuid4"
    return symbol


def install() -> bool:
    """Apply both patches; False (nothing changed) if mitmproxy moved what they change."""
    if getattr(hooks.Hook, "_vaultproxy_fast", False):
        return True
    if missing_symbol() is not None:
        return False
    for cls in (hooks.Hook, commands.StartHook):
        stock = vars(cls)["__new__"]
        stock = stock.__func__ if isinstance(stock, staticmethod) else stock
        cls.__new__ = _checked_once(stock)  # type: ignore[method-assign,assignment]
    setattr(flow, "uuid", types.SimpleNamespace(uuid4=uuid4_text))  # noqa: B010 - (not exported)
    hooks.Hook._vaultproxy_fast = True  # type: ignore[attr-defined]
    return True
