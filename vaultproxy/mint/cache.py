"""The token cache: one owner per proxy, single-flight minting, expiry margin, write-back.

The owner is the process that holds the unlocked keystore: a single-process proxy, or the
supervisor of ``--workers N`` (workers ask it over their channel, engine/tokens.py, and keep a
local copy of what it answered). So a refresh token is exchanged by one process only and a
rotation can never race.

- **Single-flight.** However many requests (and workers) want a token of one service, one
  mint runs; the others await it. The request that started it is audited ``minted``, every
  other one ``cached``.
- **Expiry.** A token is used until ``expires_at - margin`` (``MARGIN`` seconds, at most a
  tenth of its lifetime), then minted anew. No ``expires_at``: until the upstream refuses it.
- **A 401 drops it.** A caller that saw the upstream refuse token generation ``g`` passes
  ``rejected=g``: if ``g`` is still current it is dropped and a new one minted; if a newer
  one exists already (another request got there first) that one is returned.
- **Redacted everywhere before use.** Every value a mint produced (token, each cookie value,
  CSRF token, rotated field) is handed to ``Owner.share_minted`` before the token is
  returned: this process's redactors and, with ``--workers N``, every worker's (the
  supervisor waits for each one's acknowledgement) redact it until it expires.
- **Write-back before use.** A mint that rotated keystore fields (a new refresh token) has
  them saved to keystore.enc (keystore/atomic.py, under its lock) *before* the token is
  returned to anyone; if the save fails, the new fields are kept in memory for the next
  mint and the request gets ``502 token_unavailable``.
- **Never on the event loop thread synchronously.** Minting is async I/O; the keystore
  write runs in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from vaultproxy.config.models import Service
from vaultproxy.config.refs import is_ref
from vaultproxy.errors import KeystoreError, TokenUnavailable, VaultproxyError
from vaultproxy.mint.backoff import MINT_TIMEOUT, Backoff
from vaultproxy.mint.base import MINTERS, MintContext, Minted, MintFailed
from vaultproxy.mint.transport import post_for
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret

if TYPE_CHECKING:
    from vaultproxy.loaded.session import Session
    from vaultproxy.loaded.snapshot import Snapshot


class Owner(Protocol):
    """What the cache needs of the process that owns it (state.ProxyState): the unlocked
    session, the config snapshot, and a way to say the keystore's fields changed."""

    session: Session
    snapshot: Snapshot

    @property
    def locked(self) -> bool: ...

    def secrets_changed(self) -> None: ...

    async def share_minted(
        self, service: str, secrets: Iterable[bytes], expires_at: float | None
    ) -> None: ...

logger = logging.getLogger(__name__)

MARGIN = 60.0  # seconds before expiry a token is replaced (at most a tenth of its lifetime)

Source = Literal["minted", "cached"]


@dataclass(frozen=True)
class Issued:
    """A token as handed to a request: which generation, and whether this request minted it."""

    service: str
    gen: int
    minted: Minted
    source: Source
    fresh_until: float | None  # epoch seconds after which it is minted anew

    def __repr__(self) -> str:
        return f"Issued(service={self.service!r}, gen={self.gen}, source={self.source!r})"

    def fresh(self, now: float) -> bool:
        return self.fresh_until is None or now < self.fresh_until


def fresh_until(minted: Minted, now: float) -> float | None:
    if minted.expires_at is None:
        return None
    lifetime = max(0.0, minted.expires_at - now)
    return minted.expires_at - min(MARGIN, lifetime / 10)


class TokenSource(Protocol):
    """What the proxy stages ask for a minted service's token (owner or worker)."""

    async def get(self, service: Service, rejected: int | None = None) -> Issued: ...

    def reject(self, service: str, gen: int) -> None:
        """The upstream refused generation ``gen`` (a 401): the next ``get`` mints anew."""
        ...

    def clear(self) -> None: ...


def failed(service: Service, err: BaseException) -> TokenUnavailable:
    """Log why a mint failed (status and reason, never a body) and make the agent's error."""
    logger.warning("service %s: no token: %s", service.name, err)
    status = getattr(err, "status", None)
    said = f" (token endpoint answered {status})" if isinstance(status, int) else ""
    return TokenUnavailable(f"vaultproxy could not obtain a token for service "
                            f"{service.name}{said}; the proxy log says why")


class TokenCache:
    """The owner's cache (see the module docstring). ``state`` is the owning process's."""

    def __init__(self, state: Owner, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.clients = UpstreamClients()
        self._tokens: dict[str, Issued] = {}
        self._inflight: dict[str, asyncio.Future[Issued]] = {}
        self._unsaved: dict[str, dict[str, Secret]] = {}  # rotated fields not yet on disk
        self._refused: dict[str, Minted] = {}  # the last token a 401 dropped (MintContext)
        self._gen = itertools.count(1)
        self._epoch = 0  # bumped by clear(): a mint started before it is not kept
        self.exchanges = 0  # mints attempted (for tests and /metrics-like introspection)
        self.backoff = Backoff(time.monotonic)  # a failing endpoint (mint/backoff.py)

    def clear(self) -> None:
        """Forget every token (a reload, or the keystore was locked). Rotated fields not yet
        on disk are kept unless locked: they may be the only valid refresh token."""
        self._epoch += 1
        self.backoff.clear()
        self._tokens.clear()
        self._refused.clear()
        if self.state.locked:
            if self._unsaved:
                logger.error("locked with rotated credential(s) of %s not saved to the "
                             "keystore; they are lost", ", ".join(sorted(self._unsaved)))
            self._unsaved.clear()

    def reject(self, service: str, gen: int) -> None:
        current = self._tokens.get(service)
        if current is not None and current.gen == gen:
            del self._tokens[service]
            self._refused[service] = current.minted

    async def get(self, service: Service, rejected: int | None = None) -> Issued:
        name = service.name
        current = self._tokens.get(name)
        if current is not None and rejected is not None:
            self.reject(name, rejected)
            current = self._tokens.get(name)
        if current is not None and current.fresh(self.clock()):
            return current  # stored as "cached"
        pending = self._inflight.get(name)
        if pending is not None:
            issued = await asyncio.shield(pending)
            return replace(issued, source="cached")
        previous = current.minted if current is not None else self._refused.get(name)
        left = self.backoff.wait_left(name)
        if left > 0:
            raise TokenUnavailable(f"vaultproxy could not obtain a token for service {name}; "
                                   f"retrying in {left:.1f} s (the proxy log says why)")
        task = asyncio.ensure_future(self._mint_bounded(service, previous))
        self._inflight[name] = task
        task.add_done_callback(lambda t: self._done(name, t))
        return await asyncio.shield(task)

    def _done(self, name: str, task: asyncio.Future[Issued]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved: a failure reaches every waiter, not the loop's log

    async def _mint_bounded(self, service: Service, previous: Minted | None) -> Issued:
        """One mint, bounded by MINT_TIMEOUT; a failure starts (or extends) the backoff."""
        bound = min(MINT_TIMEOUT, self.state.snapshot.registry.config.proxy.response_timeout)
        try:
            issued = await asyncio.wait_for(self._mint(service, previous), bound)
        except TimeoutError:
            pause = self.backoff.failed(service.name)
            raise failed(service, TimeoutError(
                f"the token endpoint did not answer within {bound:g} s; next "
                f"attempt in {pause:.1f} s")) from None
        except TokenUnavailable:
            pause = self.backoff.failed(service.name)
            logger.warning("service %s: next token attempt in %.1f s", service.name, pause)
            raise
        self.backoff.succeeded(service.name)
        return issued

    async def _mint(self, service: Service, previous: Minted | None) -> Issued:
        epoch = self._epoch
        registered = MINTERS.get(service.auth)
        if registered is None:
            raise TokenUnavailable(f"service {service.name}: auth {service.auth} mints nothing")
        minter, _header = registered
        entry = self.state.session.entry_for(service)  # LockedError / SecretMissing
        fields: dict[str, Secret] = dict(entry.fields)
        if entry.value is not None:
            fields["value"] = entry.value
        fields.update(self._unsaved.get(service.name, {}))
        post = post_for(self.state.snapshot, self.clients, service)
        self.exchanges += 1
        try:
            minted = await minter(MintContext(service, fields, post, previous))
        except MintFailed as e:
            raise failed(service, e) from None
        # Every process redacts it (until it expires) before anyone gets it; first, so the
        # workers apply it before the keystore state the write-back sends them.
        await self.state.share_minted(service.name, minted.secrets(), minted.expires_at)
        if minted.write_back:
            await self._write_back(service, minted.write_back)
        issued = Issued(service.name, next(self._gen), minted, "minted",
                        fresh_until(minted, self.clock()))
        if epoch == self._epoch:
            self._tokens[service.name] = replace(issued, source="cached")
            self._refused.pop(service.name, None)
        return issued

    async def _write_back(self, service: Service, fields: Mapping[str, Secret]) -> None:
        """Persist rotated fields before the token they came with is used."""
        from vaultproxy.mint.writeback import save_fields

        self._unsaved.setdefault(service.name, {}).update(fields)
        ks = self.state.session.keystore
        try:
            if ks is None:
                raise KeystoreError("the keystore was locked during the mint")
            if is_ref(service.secret_name):  # "SOURCE:PATH#FIELD" (SPEC §9): not ours to write
                raise KeystoreError("its secret comes from an external source; update the "
                                    "refresh token there")
            await asyncio.to_thread(save_fields, ks, service.secret_name, fields)
        except VaultproxyError as e:
            logger.error("service %s: the rotated credential could not be written to the "
                         "keystore (%s); it is kept in memory until a write succeeds",
                         service.name, e)
            raise TokenUnavailable(
                f"service {service.name}: the rotated credential could not be saved"
            ) from None
        self._unsaved.pop(service.name, None)
        logger.info("service %s: rotated credential written to the keystore", service.name)
        self.state.secrets_changed()  # workers and redactors pick up the new fields

    async def aclose(self) -> None:
        await self.clients.aclose()
