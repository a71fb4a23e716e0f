"""uvicorn without its signal handlers: ``vaultproxy run`` and mitmdump own SIGTERM/SIGINT,
and the admin API's uvicorn servers run in their event loop.

uvicorn installs its handlers in ``Server.capture_signals`` (a name of its internals, the
same in 0.30 to 0.55); the admin server's ``Server`` overrides it with a no-op. ``check()``
(run by ``defences.install()``) refuses start-up if uvicorn no longer calls it, so a new
uvicorn can never silently take the signals over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from vaultproxy.seam.need import EngineMismatch, need


class Server(uvicorn.Server):
    """uvicorn's server, its signal handling left to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check() -> None:
    need(uvicorn.Server, "capture_signals")
    serve = need(uvicorn.Server, "serve")
    if "capture_signals" not in getattr(getattr(serve, "__code__", None), "co_names", ()):
        raise EngineMismatch("uvicorn.Server.serve no longer calls capture_signals")
