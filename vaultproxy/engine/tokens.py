"""Minted tokens in ``--workers N``: the supervisor owns the cache (mint/cache.py), workers
ask it.

Over the supervisor <-> worker channel (engine/channel.py):

- worker -> supervisor ``mint`` ``{"id", "service", "rejected"}``: a token for ``service``
  (``rejected``: the generation the upstream just refused with a 401, or null);
- supervisor -> worker ``minted`` ``{"id", "ok", "gen", "source", "fresh_until"}`` with the
  token and its headers as the payload (secret material, like the keystore plaintext the
  same channel carries), or ``{"id", "ok": false, "status", "code", "message"}``.

Redaction before use: a token leaves the proxy only on a request, and a hostile upstream may
reflect it in the answer to any request, served by any worker. So every worker must redact a
token before *any* worker sends it upstream. The supervisor's cache hands each mint's values
to ``ProxyState.share_minted`` before it answers anyone; with workers, that sends a ``redact``
frame ``{"op": "redact", "n": N}`` (payload: ``[[service, value, expires_at], ...]``) to every
worker and waits for each one's ``pong`` ``N``, which a worker sends as soon as it has applied
that frame (and so every frame before it: the channel is ordered). The cache shares a mint's
values before it writes a rotated refresh token back, so a worker is not busy applying the
keystore state that write sends when the token is waiting for its acknowledgement. Only then
does the requesting worker get its ``minted`` answer. A worker
that does not acknowledge in time is killed (workers.py); its replacement, like every new
worker, gets all current minted values in a ``redact`` frame right after ``init``, before it
serves. So no worker can forward a response holding a token it does not know.

A worker keeps what it was answered until ``fresh_until`` and asks again after that or after
a 401, one request per service at a time. Rotated keystore fields never travel here: the
supervisor saves them and sends the new keystore state first (same channel, in order), so
the worker's redactor knows the new refresh token before the worker sees the access token.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vaultproxy.config.models import Service
from vaultproxy.engine.channel import frame
from vaultproxy.errors import TokenUnavailable, VaultproxyError, error_response
from vaultproxy.keystore.crypto import wipe
from vaultproxy.mint.backoff import MINT_TIMEOUT
from vaultproxy.mint.base import Minted
from vaultproxy.mint.cache import Issued, failed
from vaultproxy.secret import Secret

if TYPE_CHECKING:
    from vaultproxy.core.state import ProxyState

logger = logging.getLogger(__name__)

# The supervisor's mint is bounded by MINT_TIMEOUT (mint/backoff.py); a worker waits a little
# longer for its answer, so the agent's wait has one bound whichever process serves it.
ASK_TIMEOUT = MINT_TIMEOUT + 5.0


class RemoteError(VaultproxyError):
    """The supervisor's refusal, carried as ours (same status, code and message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.public = status, code, message
        super().__init__(message)


class RemoteTokens:
    """A worker's token source: asks the supervisor, keeps its answers until stale."""

    def __init__(self, state: ProxyState, send: Callable[[bytes], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self._send = send
        self.clock = clock
        self._ids = itertools.count(1)
        self._tokens: dict[str, Issued] = {}
        self._asking: dict[str, asyncio.Future[Issued]] = {}
        self._answers: dict[int, asyncio.Future[Issued]] = {}
        self._rejected: dict[str, int] = {}  # told to the supervisor with the next "mint"

    def clear(self) -> None:
        self._tokens.clear()
        self._rejected.clear()

    def reject(self, service: str, gen: int) -> None:
        current = self._tokens.get(service)
        if current is not None and current.gen == gen:
            del self._tokens[service]
        self._rejected[service] = max(gen, self._rejected.get(service, 0))

    async def get(self, service: Service, rejected: int | None = None) -> Issued:
        name = service.name
        current = self._tokens.get(name)
        if rejected is not None:
            self.reject(name, rejected)
            current = self._tokens.get(name)
        if current is not None and current.fresh(self.clock()):
            return current  # stored as "cached"
        asking = self._asking.get(name)
        if asking is not None:
            return replace(await asyncio.shield(asking), source="cached")
        task = asyncio.ensure_future(self._ask(service, self._rejected.pop(name, None)))
        self._asking[name] = task
        task.add_done_callback(lambda t: self._settled(name, t))
        return await asyncio.shield(task)

    def _settled(self, name: str, task: asyncio.Future[Issued]) -> None:
        if self._asking.get(name) is task:
            del self._asking[name]
        if not task.cancelled() and task.exception() is None:
            self._tokens[name] = replace(task.result(), source="cached")

    async def _ask(self, service: Service, rejected: int | None) -> Issued:
        n = next(self._ids)
        answer: asyncio.Future[Issued] = asyncio.get_running_loop().create_future()
        self._answers[n] = answer
        try:
            self._send(frame({"op": "mint", "id": n, "service": service.name,
                              "rejected": rejected}))
            return await asyncio.wait_for(answer, ASK_TIMEOUT)
        except TimeoutError:
            raise failed(service, TimeoutError("the supervisor did not answer")) from None
        finally:
            self._answers.pop(n, None)

    def abandon(self) -> None:
        """The supervisor is gone: every request waiting for a token is answered now
        (``502 token_unavailable``), not left to be cancelled at exit."""
        for waiter in self._answers.values():
            if not waiter.done():
                waiter.set_exception(TokenUnavailable("the proxy is shutting down"))

    def answer(self, header: dict[str, Any], payload: bytearray) -> None:
        """A ``minted`` frame from the supervisor (called by the worker's channel reader)."""
        try:
            waiter = self._answers.get(int(header.get("id", 0)))
            if waiter is None or waiter.done():
                return
            if not header.get("ok"):
                waiter.set_exception(RemoteError(
                    int(header.get("status", 502)), str(header.get("code", "token_unavailable")),
                    str(header.get("message", TokenUnavailable.public)),
                ))
                return
            minted = _decode(payload)
            # Already pushed by the supervisor ("redact", before this answer); kept as a
            # second line in case this answer is all that arrived.
            self.state.session.add_minted(str(header["service"]), minted.secrets(),
                                          minted.expires_at)
            fresh = header.get("fresh_until")
            waiter.set_result(Issued(
                str(header["service"]), int(header["gen"]), minted,
                "minted" if header.get("source") == "minted" else "cached",
                float(fresh) if isinstance(fresh, int | float) else None,
            ))
        finally:
            wipe(payload)


async def serve_mint(state: ProxyState, send: Callable[[bytes], None],
                     header: dict[str, Any]) -> None:
    """Answer one worker's ``mint`` request (supervisor side)."""
    n = header.get("id")
    name = str(header.get("service", ""))
    rejected = header.get("rejected")
    try:
        service = state.registry.by_name(name)
        if service is None:
            raise TokenUnavailable(f"no service named {name}")
        issued = await state.token_source().get(
            service, int(rejected) if isinstance(rejected, int) else None
        )
    except Exception as e:  # noqa: BLE001 - every failure is answered, never dropped
        status, code, message = error_response(e)
        send(frame({"op": "minted", "id": n, "ok": False, "status": status, "code": code,
                    "message": message}))
        return
    payload = _encode(issued.minted)
    try:
        send(frame({"op": "minted", "id": n, "ok": True, "service": name, "gen": issued.gen,
                    "source": issued.source, "fresh_until": issued.fresh_until}, payload))
    finally:
        wipe(payload)


def _encode(minted: Minted) -> bytearray:
    data = {
        "token": minted.token.reveal().decode("latin-1"),
        "expires_at": minted.expires_at,
        "headers": [[n, v.reveal().decode("latin-1")] for n, v in minted.headers],
    }
    return bytearray(json.dumps(data).encode())


def _decode(payload: bytearray) -> Minted:
    data = json.loads(bytes(payload))
    headers = tuple((str(n), Secret(str(v).encode("latin-1"))) for n, v in data["headers"])
    expires = data.get("expires_at")
    return Minted(Secret(str(data["token"]).encode("latin-1")),
                  float(expires) if isinstance(expires, int | float) else None,
                  headers=headers)


def redact_frame(values: list[tuple[str, bytes, float | None]], n: int = 0) -> bytes:
    """A ``redact`` frame: minted values every worker must redact (payload: JSON list of
    ``[service, value (latin-1), expires_at]``; secret material, like ``minted``). ``n`` > 0:
    the worker answers ``pong`` ``n`` as soon as it has applied it."""
    data = [[svc, v.decode("latin-1"), until] for svc, v, until in values]
    payload = bytearray(json.dumps(data).encode())
    try:
        return frame({"op": "redact", "n": n}, payload)
    finally:
        wipe(payload)


def apply_redact(state: ProxyState, payload: bytearray) -> set[str]:
    """A ``redact`` frame arrived at a worker: its redactors cover these values from now.
    Returns the services concerned (the caller may compile their redactors ahead)."""
    services: set[str] = set()
    try:
        for svc, value, until in json.loads(bytes(payload)):
            state.session.add_minted(
                str(svc), [str(value).encode("latin-1")],
                float(until) if isinstance(until, int | float) else None,
            )
            services.add(str(svc))
    finally:
        wipe(payload)
    return services


_serving: set[asyncio.Task[None]] = set()


def spawn_serve(state: ProxyState, send: Callable[[bytes], None],
                header: dict[str, Any]) -> None:
    """Answer a worker's ``mint`` in its own task (the channel reader never waits on it)."""
    task = asyncio.create_task(serve_mint(state, send, header))
    _serving.add(task)
    task.add_done_callback(_serving.discard)


def deliver(state: ProxyState, header: dict[str, Any], payload: bytearray) -> None:
    """A ``minted`` frame arrived at a worker: hand it to the waiting request."""
    tokens = state.tokens
    if isinstance(tokens, RemoteTokens):
        tokens.answer(header, payload)
    else:
        wipe(payload)
