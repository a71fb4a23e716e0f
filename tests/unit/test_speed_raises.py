"""Forms that spare CPython an exception raised and cleared per request or connection
answer exactly as the general forms they replace (seeded: the same cases every run)."""

from __future__ import annotations

import asyncio
import random
import string

from vaultproxy.seam import deadlines

_MISSING = object()


def _read(module: object, name: str) -> object:
    try:
        return getattr(module, name)
    except AttributeError:
        return _MISSING


def test_bounded_asyncio_reads_as_asyncio() -> None:
    """``_BoundedAsyncio`` (mitmproxy's server's ``asyncio``) answers every name asyncio
    has, and seeded names it has not, as ``getattr(asyncio, name)`` does (the same object,
    or AttributeError), except its own bounded ``open_connection``; and asyncio's names are
    in its dict (read without the module's AttributeError and ``__getattr__``)."""
    bounded = deadlines._BoundedAsyncio("asyncio")
    rng = random.Random(29)
    names = sorted(set(dir(asyncio)) | {"open_connection", "__file__", "__all__", "__path__"})
    names += ["".join(rng.choice(string.ascii_letters + "_") for _ in range(rng.randint(1, 12)))
              for _ in range(300)]
    missing = 0
    for name in names:
        if name == "open_connection":
            continue
        want = _read(asyncio, name)
        if name in ("__name__", "__doc__", "__dict__", "__class__", "__spec__", "__loader__",
                    "__package__", "__getattr__", "__init__", "__module__"):
            continue  # (the module object's own, before and after)
        assert _read(bounded, name) is want, name
        missing += want is _MISSING
    assert missing > 250  # twin: the misses are asked too
    assert bounded.open_connection is deadlines._BoundedAsyncio.open_connection
    assert bounded.open_connection is not asyncio.open_connection
    assert bounded.__name__ == "asyncio"
    for name in ("Event", "Lock", "Semaphore", "sleep", "wait", "current_task",
                 "CancelledError", "StreamReader", "StreamWriter", "Task", "start_server"):
        assert vars(bounded)[name] is getattr(asyncio, name)  # the fast path is taken
