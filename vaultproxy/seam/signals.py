"""uvicorn without its signal handlers: ``vaultproxy run`` and mitmdump own SIGTERM/SIGINT,
and the admin API's uvicorn servers run in their event loop.

uvicorn installs its handlers in ``Server.capture_signals`` (a name of its internals, the
same in 0.30 to 0.55); the admin server's ``Server`` overrides it with a no-op. ``check()``
refuses start-up if uvicorn no longer calls it, so a new uvicorn can never silently take the
signals over.

An idle uvicorn server wakes its event loop ten times a second: ``Server.main_loop`` sleeps
0.1 s between ``on_tick`` calls, which refresh the ``Date`` header once a second, call
``callback_notify``, and end the loop once ``should_exit`` is set or ``limit_max_requests``
is reached. Our servers use none of these (``date_header=False``, no notify callback, no
request limit: admin/server.py ``_config``), so their ``main_loop`` runs ``on_tick(0)``
once (the default headers) and then sleeps until ``should_exit`` is set, whose setter wakes
it (from any thread): the same stop, without the 100 ms poll. A config that uses any of
them, or a uvicorn whose ``main_loop``/``on_tick`` differ from the ones this was written
against (``MAIN_LOOP_FINGERPRINTS``), runs uvicorn's own loop.

uvicorn (with click and multiprocessing) is imported only by a process that serves over it:
``Server`` is built on first use, and ``check()`` runs right then, before any uvicorn
server can exist. ``defences.install()`` also runs ``check()`` when uvicorn is already
imported (``vaultproxy run``: the admin server); a ``--workers`` worker, which runs no
uvicorn, never loads it (~6 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vaultproxy.seam.need import EngineMismatch, need, unchanged

#: ``uvicorn.Server.main_loop`` and ``on_tick`` (0.54) as ``Server.main_loop`` replaces them:
#: (source fingerprint, code fingerprint); another uvicorn keeps its own ``main_loop``.
MAIN_LOOP_FINGERPRINTS = {
    "main_loop": ("afccb353a119333f", "e10eb5cf038483e2"),
    "on_tick": ("60ea49b06ccf68c1", "cc817cabb0b1f602"),
}

if TYPE_CHECKING:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, its signal handling left to the process that embeds it."""


def quiet_main_loop() -> bool:
    """Is uvicorn's ``main_loop``/``on_tick`` the one ``Server.main_loop`` stands in for?"""
    import uvicorn

    return all(unchanged(getattr(uvicorn.Server, name, None), source, code)
               for name, (source, code) in MAIN_LOOP_FINGERPRINTS.items())


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _build() -> type:
    import uvicorn

    check()
    quiet = quiet_main_loop()

    class Server(uvicorn.Server):
        """uvicorn's server, its signal handling left to the process that embeds it."""

        _exit = False
        _exit_waiter: asyncio.Future[None] | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        @property  # type: ignore[override]
        def should_exit(self) -> bool:
            return self._exit

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._exit = value
            waiter = self._exit_waiter
            if value and waiter is not None:
                self._exit_waiter = None
                with contextlib.suppress(RuntimeError):  # (its loop closed: nobody waits)
                    waiter.get_loop().call_soon_threadsafe(_wake, waiter)

        def ticks(self) -> bool:
            """Does this server need uvicorn's 0.1 s ticks (see the module docstring)?"""
            config = self.config
            return (not quiet or bool(config.date_header)
                    or config.callback_notify is not None
                    or config.limit_max_requests is not None)

        async def main_loop(self) -> None:
            if self.ticks():
                await super().main_loop()
                return
            if await self.on_tick(0):  # the default headers; stop if asked already
                return
            loop = asyncio.get_running_loop()
            while True:
                waiter = loop.create_future()
                self._exit_waiter = waiter
                if self._exit:  # (set before the waiter was there to be woken)
                    self._exit_waiter = None
                    return
                try:
                    await waiter
                finally:
                    self._exit_waiter = None

    return Server


def __getattr__(name: str) -> Any:  # PEP 562: ``Server`` is built on first use
    if name == "Server":
        server = _build()
        globals()["Server"] = server
        return server
    raise AttributeError(name)


def check() -> None:
    import uvicorn

    need(uvicorn.Server, "capture_signals")
    serve = need(uvicorn.Server, "serve")
    if "capture_signals" not in getattr(getattr(serve, "__code__", None), "co_names", ()):
        raise EngineMismatch("uvicorn.Server.serve no longer calls capture_signals")


def check_if_loaded() -> None:
    """``check()`` when this process has imported uvicorn (it may serve over it)."""
    if "uvicorn" in sys.modules:
        check()
