"""The serving processes' event loop: uvloop (libuv, written in C) unless switched off.

``vaultproxy run`` and each of its ``--workers N`` workers run on uvloop's loop: the work
asyncio does for every request (handles, the ready queue, socket transports' writes, task
creation) is ~14 % of a keep-alive request's CPU in Python, and uvloop does it in C. Nothing
of the proxy depends on the selector loop's internals: the accept loop (seam/accept.py) uses
only ``add_reader``/``remove_reader``, uvloop sets TCP_NODELAY on every TCP transport (as
seam/accept.py's ``nodelay`` does for ours), and the signal handlers, subprocesses and
``get_extra_info("socket")`` (a stand-in socket: ``fileno``, ``getsockopt``) behave the same.

``VAULTPROXY_UVLOOP=0`` in the environment keeps asyncio's default loop (an A/B measurement,
or an escape hatch); a worker inherits the choice. Without uvloop installed, one WARNING and
the default loop. One INFO line per process names the loop it serves on.

Only the serving processes: other commands' ``asyncio.run`` (health, sync, the sandbox's
forwarder thread) and ``mitmdump -s addons/vaultproxy.py`` (mitmproxy's own ``asyncio.run``
has started before the script loads) keep asyncio's default loop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from vaultproxy.errors import UsageError

logger = logging.getLogger("vaultproxy.loop")

ENV = "VAULTPROXY_UVLOOP"
_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"", "1", "true", "yes", "on"})

def wanted() -> bool:
    """Does the environment ask for uvloop (the default)? A value that is neither says so."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise UsageError(
        f"{ENV}={value!r} is not understood: set it to 1 (uvloop, the default) or 0 "
        "(asyncio's default event loop), or unset it"
    )


def factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop (switched off, or uvloop
    cannot be imported: one WARNING says which and that the proxy serves anyway)."""
    if not wanted():
        return None
    try:
        import uvloop
    except ImportError as e:
        logger.warning("uvloop cannot be imported (%s): serving on asyncio's default event "
                       "loop (slower; `pip install uvloop`, or %s=0 to silence this)", e, ENV)
        return None
    return uvloop.new_event_loop


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop 0.23.0`` or ``asyncio _UnixSelectorEventLoop``: what this loop is."""
    module = type(loop).__module__
    if module.startswith("uvloop"):
        import uvloop

        return f"uvloop {getattr(uvloop, '__version__', '?')}"
    return f"asyncio {type(loop).__name__}"


def run[T](main: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """``asyncio.run(main(*args))`` on the serving loop. The coroutine is made only once the
    loop is chosen, so a bad ``VAULTPROXY_UVLOOP`` leaves no coroutine un-awaited."""
    loop_factory = factory()

    async def announced() -> T:
        logger.info("event loop: %s (pid %d)", describe(asyncio.get_running_loop()), os.getpid())
        return await main(*args)

    return asyncio.run(announced(), loop_factory=loop_factory)
