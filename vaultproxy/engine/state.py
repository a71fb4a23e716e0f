"""The running proxy's state: registry, unlocked keystore, audit log, tunnels.

One ``ProxyState`` per process. The registry is immutable and swapped whole on reload;
decrypted material lives only in the keystore object and the per-service redactors built
from it, both dropped by ``lock()``.

Every change (reload, unlock, lock, secret write) bumps ``generation`` and calls the
``on_change`` callbacks; with ``--workers N`` the supervisor (engine/workers.py) uses them to
send the new state to every worker, and ``await settled()`` returns once all have applied it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from vaultproxy import logfilter
from vaultproxy.agents import AgentRecord, load_records
from vaultproxy.audit import AuditLog
from vaultproxy.ca import system_ca_file
from vaultproxy.config.load import parse_config, read_text
from vaultproxy.config.models import Service
from vaultproxy.errors import ConfigError, LockedError, SecretMissing
from vaultproxy.home import Home
from vaultproxy.keystore import Entry, Keystore
from vaultproxy.placeholders import PlaceholderIndex
from vaultproxy.policy import AddressContext
from vaultproxy.redact import Redactor
from vaultproxy.registry import Registry
from vaultproxy.secret import Secret

logger = logging.getLogger(__name__)


@dataclass
class Tunnel:
    """What we know about one client connection's CONNECT: the target and its service."""

    host: str
    port: int
    service: Service | None
    agent: str | None = None
    pinned: tuple[str, int] | None = None  # the checked address we dial
    sni_mismatch: bool = False
    broken: bool = False  # a hook failed on this connection: refuse every request on it


@dataclass(frozen=True)
class Snapshot:
    """Everything a hook needs from the registry, built once per (re)load."""

    registry: Registry
    index: PlaceholderIndex
    passthrough: AddressContext
    service_contexts: dict[str, AddressContext]
    trust_files: dict[str, Path]


@dataclass
class ProxyState:
    home: Home
    snapshot: Snapshot
    audit: AuditLog
    keystore: Keystore | None = None
    own_listeners: frozenset[tuple[str, int]] = frozenset()
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    broken_clients: set[str] = field(default_factory=set)
    inflight: int = 0
    agents: dict[str, AgentRecord] = field(default_factory=dict)  # token hashes, on unlock
    config_text: str = ""  # the services.toml text the registry was built from
    generation: int = 0
    on_change: list[Callable[[], None]] = field(default_factory=list)
    barrier: Callable[[], Awaitable[None]] | None = None
    _redactors: dict[str, Redactor] = field(default_factory=dict)
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
        registry = Registry.from_config(parse_config(text, home.path))
        snapshot = build_snapshot(home, registry, own_listeners)
        return cls(home, snapshot, audit or AuditLog(home.audit), own_listeners=own_listeners,
                   config_text=text)

    # -- change notification (workers) ------------------------------------------------------
    def _changed(self) -> None:
        self.generation += 1
        self._warm_redactors()
        for callback in list(self.on_change):
            callback()

    def _warm_redactors(self) -> None:
        """Build every service's redactor now (a few ms each, regex compiles), not in the
        first response that needs one: a streamed reply's first event would wait for it."""
        if self.keystore is None:
            logfilter.use(None)
            return
        pairs: list[tuple[bytes, bytes]] = []
        for service in self.registry.services:
            self.redactor_for(service)
            try:
                pairs.extend(self._secret_pairs(service))
            except (LockedError, SecretMissing):
                continue  # `check` and the start-up warning name it; nothing to redact
        logfilter.use(Redactor(pairs))

    async def settled(self) -> None:
        """Return once every worker process runs the current state (no-op with one process)."""
        if self.barrier is not None:
            await self.barrier()

    # -- registry -----------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self.snapshot.registry

    def reload(self) -> tuple[int, int]:
        """Re-read services.toml. On error raise ConfigError and keep the old registry."""
        return self.reload_text(read_text(self.home.services))

    def reload_text(self, text: str) -> tuple[int, int]:
        """Swap in the registry built from ``text``; on error raise and keep the old one."""
        before = len(self.registry.services)
        registry = Registry.from_config(parse_config(text, self.home.path))
        snapshot = build_snapshot(self.home, registry, self.own_listeners)
        with self._lock:
            self.snapshot = snapshot
            self.config_text = text
            self._redactors.clear()
        self._changed()
        logger.info("registry reloaded: %d -> %d services", before, len(registry.services))
        return before, len(registry.services)

    def set_own_listeners(self, listeners: frozenset[tuple[str, int]]) -> None:
        self.own_listeners = listeners
        self.snapshot = build_snapshot(self.home, self.registry, listeners)
        self._changed()

    def trust_file(self, service: Service) -> Path:
        return self.snapshot.trust_files[service.name]

    def address_context(self, service: Service | None) -> AddressContext:
        snap = self.snapshot
        if service is None:
            return snap.passthrough
        return snap.service_contexts[service.name]

    # -- keystore -----------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.keystore is None

    def unlock_sync(self, password: Secret) -> None:
        self.install_keystore(Keystore.open(self.home.keystore, password))

    def refresh_keystore(self) -> bool:
        """Re-read keystore.enc with the unlocked data key (SIGHUP, ``POST /v1/reload``).

        What the CLI wrote while we run (``secret set``, ``agent add/rm``) starts serving;
        True if anything changed. On KeystoreError the unlocked copy keeps serving.
        """
        ks = self.keystore
        if ks is None or not ks.refresh():
            return False
        self.install_keystore(ks)
        return True

    def install_keystore(self, ks: Keystore) -> None:
        """Serve from ``ks`` (an opened keystore, or a worker's read-only view of one)."""
        agents = load_agents(ks)
        with self._lock:
            self.keystore = ks
            self.agents = agents
            self._redactors.clear()
        self._changed()

    async def unlock(self, password: Secret) -> None:
        """Run the KDF off the event loop, then swap the keystore in."""
        await asyncio.to_thread(self.unlock_sync, password)

    def lock(self) -> None:
        with self._lock:
            ks, self.keystore = self.keystore, None
            self.agents = {}
            self._redactors.clear()
        if ks is not None:
            wipe = getattr(ks, "wipe", None)
            if callable(wipe):
                wipe()
        self._changed()

    def entry_for(self, service: Service) -> Entry:
        ks = self.keystore
        if ks is None:
            raise LockedError()
        entry = ks.get(service.secret_name)
        if entry is None:
            raise SecretMissing(f"keystore has no entry for service {service.name}")
        return entry

    def secrets_changed(self) -> None:
        ks = self.keystore
        agents = load_agents(ks) if ks is not None else {}
        with self._lock:
            self.agents = agents
            self._redactors.clear()
        self._changed()

    def _secret_pairs(self, service: Service) -> list[tuple[bytes, bytes]]:
        """(secret, placeholder) for each secret of the service's entry (not ``username``);
        raises LockedError/SecretMissing."""
        entry = self.entry_for(service)
        placeholder = service.placeholder_text.encode()
        pairs: list[tuple[bytes, bytes]] = []
        if entry.value is not None and len(entry.value) >= 4:
            pairs.append((entry.value.reveal(), placeholder))
        for field_name, secret in entry.fields.items():
            if field_name != "username" and len(secret) >= 4:
                pairs.append((secret.reveal(), placeholder))
        return pairs

    def redactor_for(self, service: Service) -> Redactor | None:
        """The response redactor for a service's secret, or None when locked/missing."""
        cached = self._redactors.get(service.name)
        if cached is not None:
            return cached
        try:
            pairs = self._secret_pairs(service)
        except (LockedError, SecretMissing):
            return None
        redactor = Redactor(pairs)
        with self._lock:
            self._redactors[service.name] = redactor
        return redactor


def load_agents(ks: Keystore) -> dict[str, AgentRecord]:
    pairs = [(n, ks.get_internal(n)) for n in ks.internal_names("agent:")]
    return load_records((n, v) for n, v in pairs if v is not None)


def build_snapshot(home: Home, registry: Registry, own: frozenset[tuple[str, int]]) -> Snapshot:
    cfg = registry.config
    index = PlaceholderIndex({s.placeholder_text: s.name for s in registry.services})
    passthrough = AddressContext(
        passthrough_allow=tuple(cfg.proxy.passthrough_allow), own_listeners=own
    )
    contexts = {
        s.name: AddressContext(
            allow_private=s.allow_private, allow_loopback=s.allow_loopback, own_listeners=own
        )
        for s in registry.services
    }
    return Snapshot(registry, index, passthrough, contexts, build_trust_files(home, registry))


def build_trust_files(home: Home, registry: Registry) -> dict[str, Path]:
    """Upstream trust per service: the system store, plus the service's own ca_cert if any."""
    system = system_ca_file(home)
    out: dict[str, Path] = {}
    for service in registry.services:
        if not service.ca_cert:
            out[service.name] = system
            continue
        path = home.mitm_confdir / f"trust-{service.name}.pem"
        extra = (home.path / service.ca_cert).read_bytes()
        data = system.read_bytes().rstrip(b"\n") + b"\n" + extra
        home.mitm_confdir.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers write the same files
        tmp.write_bytes(data)
        os.replace(tmp, path)
        out[service.name] = path
    return out


def problems_text(err: ConfigError) -> str:
    return "\n".join(f"  {p}" for p in err.problems)
