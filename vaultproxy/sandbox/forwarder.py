"""Inside the sandbox's network namespace: listen where ``HTTPS_PROXY`` points
(127.0.0.1:PORT) and carry each connection to the proxy's Unix socket, over a connection
`exec` made outside and handed in (sandbox/broker.py).

It runs its own event loop in a daemon thread of ``inner``; the agent is the main thread's
business. Nothing else leaves the namespace: a client that ignores the proxy variables finds
no route and no DNS, and fails to connect.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from vaultproxy.net.splice import splice
from vaultproxy.sandbox.broker import Connector

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class Forwarder:
    def __init__(self, listen: tuple[str, int], connector: Connector) -> None:
        self.listen, self.connector = listen, connector
        self._ready = threading.Event()
        self._error: str | None = None

    def start(self) -> None:
        """Listening when this returns; raises OSError when the address cannot be bound."""
        threading.Thread(target=self._run, name="vaultproxy-forwarder", daemon=True).start()
        if not self._ready.wait(START_TIMEOUT):
            raise OSError("the forwarder did not start")
        if self._error is not None:
            raise OSError(self._error)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            server = await asyncio.start_server(self._handle, *self.listen)
        except OSError as e:
            self._error = f"cannot listen on {self.listen[0]}:{self.listen[1]}: {e.strerror}"
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = await asyncio.get_running_loop().run_in_executor(None,
                                                                    self.connector.connect)
            up = await asyncio.open_unix_connection(sock=sock)
        except OSError as e:
            logger.error("vaultproxy: the proxy is not reachable (%s); is `vaultproxy run` "
                         "still up?", e.strerror)
            writer.close()
            return
        await splice((reader, writer), up)
