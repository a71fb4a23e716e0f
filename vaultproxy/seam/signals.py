"""uvicorn without its signal handlers: ``vaultproxy run`` and mitmdump own SIGTERM/SIGINT,
and the admin API's uvicorn servers run in their event loop.

uvicorn installs its handlers in ``Server.capture_signals`` (a name of its internals, the
same in 0.30 to 0.55); the admin server's ``Server`` overrides it with a no-op. ``check()``
refuses start-up if uvicorn no longer calls it, so a new uvicorn can never silently take the
signals over.

uvicorn (with click and multiprocessing) is imported only by a process that serves over it:
``Server`` is built on first use, and ``check()`` runs right then, before any uvicorn
server can exist. ``defences.install()`` also runs ``check()`` when uvicorn is already
imported (``vaultproxy run``: the admin server); a ``--workers`` worker, which runs no
uvicorn, never loads it (~6 MiB).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vaultproxy.seam.need import EngineMismatch, need

if TYPE_CHECKING:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, its signal handling left to the process that embeds it."""


def _build() -> type:
    import uvicorn

    check()

    class Server(uvicorn.Server):
        """uvicorn's server, its signal handling left to the process that embeds it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

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
