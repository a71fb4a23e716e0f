"""The running proxy's state: the config snapshot (loaded/snapshot.py, swapped whole on reload), the
session (loaded/session.py: the unlocked keystore, agents and redactors, dropped by ``lock()``),
and the audit log.

Every change (reload, unlock, lock, secret write) bumps ``generation`` and calls the
``on_change`` callbacks; with ``--workers N`` the supervisor (engine/workers.py) uses them to
send the new state to every worker, and ``await settled()`` returns once all have applied it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vaultproxy.audit import AuditLog
from vaultproxy.config.load import read_text
from vaultproxy.errors import NotReady
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore
from vaultproxy.loaded.registry import Registry
from vaultproxy.loaded.session import Session
from vaultproxy.loaded.snapshot import Snapshot
from vaultproxy.secret import Secret
from vaultproxy.unshadow import unshadowed

if TYPE_CHECKING:
    from vaultproxy.access.desk import AccessDesk, Desk
    from vaultproxy.mint.cache import TokenSource

logger = logging.getLogger(__name__)


@unshadowed
@dataclass
class ProxyState:
    """One per process: the config snapshot, the session, the audit log, and the change
    notification that keeps ``--workers N`` processes on the same state."""

    home: Home
    snapshot: Snapshot
    audit: AuditLog
    session: Session = field(default_factory=Session)
    own_listeners: frozenset[tuple[str, int]] = frozenset()
    inflight: int = 0
    generation: int = 0
    on_change: list[Callable[[], None]] = field(default_factory=list)
    barrier: Callable[[], Awaitable[None]] | None = None
    # Minted credentials (SPEC §4.1): the owner's cache, or a worker's client of it.
    tokens: TokenSource | None = None
    # Approvals, grants and rate limits (SPEC §10): this process's desk, or a worker's client
    # of the supervisor's (engine/access_channel.py).
    access: Desk | None = None
    # --workers N: the supervisor's push of minted values to every worker; returns once each
    # one redacts them (engine/workers.py). None in a single process.
    minted_push: Callable[[str, list[bytes], float | None], Awaitable[None]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(
        cls, home: Home, *, own_listeners: frozenset[tuple[str, int]] = frozenset()
    ) -> ProxyState:
        return cls.from_text(home, read_text(home.services), own_listeners=own_listeners)

    @classmethod
    def from_text(
        cls,
        home: Home,
        text: str,
        *,
        own_listeners: frozenset[tuple[str, int]] = frozenset(),
        audit: AuditLog | None = None,
    ) -> ProxyState:
        snapshot = Snapshot.build(home, text, own_listeners)
        state = cls(home, snapshot, audit or AuditLog(home.audit), own_listeners=own_listeners)
        state.audit.on_failure = snapshot.registry.config.audit.on_failure
        return state

    # -- change notification (workers) ------------------------------------------------------
    def _changed(self) -> None:
        self.generation += 1
        days = float(self.registry.config.proxy.retired_redact_days)
        self.session.retired_days = days
        ks = self.session.keystore
        if ks is not None:
            ks.retired_days = days  # its saves drop what is older
        self.session.warm(self.registry.services)
        for callback in list(self.on_change):
            callback()

    async def settled(self) -> None:
        """Return once every worker process runs the current state (no-op with one process)."""
        if self.barrier is not None:
            await self.barrier()

    # -- config snapshot ------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self.snapshot.registry

    def reload(self) -> tuple[int, int]:
        """Re-read services.toml. On error raise ConfigError and keep the old registry."""
        return self.reload_text(read_text(self.home.services))

    def reload_text(self, text: str) -> tuple[int, int]:
        """Swap in the registry built from ``text``; on error raise and keep the old one."""
        before = len(self.registry.services)
        snapshot = Snapshot.build(self.home, text, self.own_listeners)
        with self._lock:
            self.snapshot = snapshot
            self.session.forget_redactors()
        self.audit.on_failure = snapshot.registry.config.audit.on_failure  # [audit]
        if self.tokens is not None:
            self.tokens.clear()  # a changed token_url/scope/login takes effect at once
        self._changed()
        after = len(snapshot.registry.services)
        logger.info("registry reloaded: %d -> %d services", before, after)
        return before, after

    def set_own_listeners(self, listeners: frozenset[tuple[str, int]]) -> None:
        self.own_listeners = listeners
        self.snapshot = self.snapshot.with_own_listeners(self.home, listeners)
        self._changed()

    # -- session --------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.session.locked

    def unlock_sync(self, password: Secret) -> None:
        self.install_keystore(Keystore.open(self.home.keystore, password))

    async def unlock(self, password: Secret) -> None:
        """Run the KDF off the event loop, then swap the keystore in."""
        await asyncio.to_thread(self.unlock_sync, password)

    def refresh_keystore(self) -> bool:
        """Re-read keystore.enc with the unlocked data key (SIGHUP, ``POST /v1/reload``).

        What the CLI wrote while we run (``secret set``, ``agent add/rm``) starts serving;
        True if anything changed. On KeystoreError the unlocked copy keeps serving.
        """
        if not self.session.refresh():
            return False
        self._changed()
        return True

    def install_keystore(self, ks: Keystore) -> None:
        """Serve from ``ks`` (an opened keystore, or a worker's read-only view of one)."""
        self.session.install(ks)
        self._changed()

    def lock(self) -> None:
        self.session.lock()
        if self.tokens is not None:
            self.tokens.clear()
        self._changed()

    def token_source(self) -> TokenSource:
        """Where minted tokens come from: this process owns the cache unless a worker's
        channel client was installed (engine/worker.py)."""
        if self.tokens is None:
            from vaultproxy.mint.cache import TokenCache

            self.tokens = TokenCache(self)
        return self.tokens

    def access_desk(self) -> Desk:
        """Where approvals and rate limits live: this process, unless a worker's channel
        client was installed (engine/worker.py)."""
        if self.access is None:
            from vaultproxy.access.desk import AccessDesk

            desk = AccessDesk(lambda: self.registry.config.approvals, self.audit)
            self.access = desk
            self.on_change.append(lambda: self._keep_grants(desk))
        return self.access

    def _keep_grants(self, desk: AccessDesk) -> None:
        """Grants belong to an agent's token: ``agent rm`` (or an add under a removed name,
        or a rotation) reaches the desk with the re-read keystore and drops the old ones.
        Locked: the agents are unknown, nothing is dropped (none can be used either)."""
        if not self.session.locked:
            desk.book.keep_agents({n: r.identity for n, r in self.session.agents.items()})
    async def share_minted(
        self, service: str, secrets: Iterable[bytes], expires_at: float | None
    ) -> None:
        """Redact what a mint produced in this process and, with ``--workers N``, in every
        worker, before the token is handed to anyone (SPEC §5: in every worker before any
        worker uses it)."""
        values = list(secrets)
        self.session.add_minted(service, values, expires_at)
        if self.minted_push is not None:
            await self.minted_push(service, values, expires_at)

    def secrets_changed(self) -> None:
        self.session.secrets_changed()
        self._changed()


class Live:
    """The process's current ProxyState, handed to whoever serves it (the proxy's stages, the
    admin API): None until a home is loaded, and again while mitmdump refuses traffic.

    ``watch(callback)``: called whenever ``state`` is assigned (a plain attribute to read:
    only its assignment, rare, goes through ``__setattr__``)."""

    state: ProxyState | None
    _watchers: list[Callable[[], None]]

    def __init__(self, state: ProxyState | None = None) -> None:
        object.__setattr__(self, "_watchers", [])
        self.state = state

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name == "state":
            for callback in list(self._watchers):
                callback()

    def watch(self, callback: Callable[[], None]) -> None:
        self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)

    def require(self) -> ProxyState:
        if self.state is None:
            raise NotReady()
        return self.state
