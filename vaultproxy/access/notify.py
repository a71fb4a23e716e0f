"""``[approvals] notify_command``: tell a person that something needs them.

The command is run directly (``exec``, never a shell) with the one-line summary as its last
argument; the summary names agent, service, method, host, path and body size, never a secret
or a body. At most ``BURST`` runs at once and ``RATE`` per second after that: a flood of held
requests or honeytoken hits cannot fork-bomb the machine; what is dropped is logged (count
only). Output is discarded; a failing command is logged with its exit status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

BURST = 5
RATE = 0.2  # runs per second once the burst is spent (one per 5 s)
TIMEOUT = 30.0


class Notifier:
    def __init__(self, command: Callable[[], Sequence[str] | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._command = command
        self.clock = clock
        self._tokens = float(BURST)
        self._at = clock()
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _allowed(self) -> bool:
        now = self.clock()
        self._tokens = min(float(BURST), self._tokens + (now - self._at) * RATE)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def notify(self, summary: str) -> None:
        """Start the command for ``summary`` (in the background); never raises."""
        cmd = self._command()
        if not cmd:
            return
        if not self._allowed():
            self.dropped += 1
            logger.warning("notify_command: rate limit reached, %d notification(s) dropped",
                           self.dropped)
            return
        try:
            task = asyncio.get_running_loop().create_task(self._run([*cmd, summary]))
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, argv: list[str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as e:
            logger.warning("notify_command could not start: %s", e.strerror or type(e).__name__)
            return
        try:
            rc = await asyncio.wait_for(proc.wait(), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            logger.warning("notify_command ran over %.0f s and was killed", TIMEOUT)
            return
        if rc != 0:
            logger.warning("notify_command exited with status %d", rc)
