"""The session: what is secret and lives only while the proxy is unlocked.

The unlocked keystore, the agents' token hashes read from it, and the per-service response
redactors built from its secrets and from what was minted (below). ``lock()`` drops them
all and wipes the keystore's copy. Nothing here reads services.toml: the caller passes the
snapshot's services in.

Minted credentials (SPEC §4.1): the token cache (mint/cache.py) or a worker's copy of it
(engine/tokens.py) calls ``add_minted`` with every token, cookie and rotated field it hands
out, before any request uses it; the service's redactor is rebuilt to redact them too (the
last ``MINTED_KEPT`` of each service, so a token replaced while a reply is in flight stays
redacted)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from vaultproxy import logfilter
from vaultproxy.agents import AgentRecord, load_records
from vaultproxy.config.models import Service
from vaultproxy.config.signed import PUBLIC_FIELDS
from vaultproxy.errors import LockedError, SecretMissing
from vaultproxy.keystore import Entry, Keystore
from vaultproxy.redact import Redactor
from vaultproxy.sync.base import is_ref
from vaultproxy.sync.cached import cached_entry, ref_of

MINTED_KEPT = 8


class Session:
    def __init__(self) -> None:
        self.keystore: Keystore | None = None
        self.agents: dict[str, AgentRecord] = {}
        self._redactors: dict[str, Redactor] = {}
        self._minted: dict[str, deque[bytes]] = {}
        self._version = 0  # bumped by add_minted: a redactor built before it is not kept
        self._lock = threading.Lock()

    @property
    def locked(self) -> bool:
        return self.keystore is None

    def install(self, ks: Keystore) -> None:
        """Serve from ``ks`` (an opened keystore, or a worker's read-only view of one)."""
        agents = load_agents(ks)
        with self._lock:
            self.keystore = ks
            self.agents = agents
            self._redactors.clear()

    def refresh(self) -> bool:
        """Re-read keystore.enc with the unlocked data key; True if anything changed."""
        ks = self.keystore
        if ks is None or not ks.refresh():
            return False
        self.install(ks)
        return True

    def lock(self) -> None:
        with self._lock:
            ks, self.keystore = self.keystore, None
            self.agents = {}
            self._redactors.clear()
            self._minted.clear()
        if ks is not None:
            wipe = getattr(ks, "wipe", None)
            if callable(wipe):
                wipe()

    def secrets_changed(self) -> None:
        ks = self.keystore
        agents = load_agents(ks) if ks is not None else {}
        with self._lock:
            self.agents = agents
            self._redactors.clear()

    def forget_redactors(self) -> None:
        """The services changed (a reload): redactors are rebuilt on next use."""
        with self._lock:
            self._redactors.clear()

    def add_minted(self, service: str, secrets: Iterable[bytes]) -> None:
        """Redact ``secrets`` (a minted token, cookie, rotated field) in ``service``'s
        responses from now on."""
        with self._lock:
            kept = self._minted.setdefault(service, deque(maxlen=MINTED_KEPT))
            new = [s for s in secrets if len(s) >= 4 and s not in kept]
            if not new:
                return
            kept.extend(new)
            self._version += 1
            self._redactors.pop(service, None)

    def entry_for(self, service: Service) -> Entry:
        ks = self.keystore
        if ks is None:
            raise LockedError()
        if is_ref(service.secret_name):  # "SOURCE:PATH#FIELD": the source cache (SPEC §9)
            return cached_entry(ks, ref_of(service.secret_name), service.name)
        entry = ks.get(service.secret_name)
        if entry is None:
            raise SecretMissing(f"keystore has no entry for service {service.name}")
        return entry

    def _secret_pairs(self, service: Service) -> list[tuple[bytes, bytes]]:
        """(secret, placeholder) for each secret of the service's entry (not ``username``, nor
        the ids in ``config.signed.PUBLIC_FIELDS``);
        raises LockedError/SecretMissing."""
        entry = self.entry_for(service)
        placeholder = service.placeholder_text.encode()
        pairs: list[tuple[bytes, bytes]] = []
        if entry.value is not None and len(entry.value) >= 4:
            pairs.append((entry.value.reveal(), placeholder))
        public = PUBLIC_FIELDS.get(service.auth, frozenset())
        for field_name, secret in entry.fields.items():
            if field_name != "username" and field_name not in public and len(secret) >= 4:
                pairs.append((secret.reveal(), placeholder))
        with self._lock:
            pairs.extend((s, placeholder) for s in self._minted.get(service.name, ()))
        return pairs

    def redactor_for(self, service: Service) -> Redactor | None:
        """The response redactor for a service's secret, or None when locked/missing."""
        cached = self._redactors.get(service.name)
        if cached is not None:
            return cached
        version = self._version
        try:
            pairs = self._secret_pairs(service)
        except (LockedError, SecretMissing):
            return None
        redactor = Redactor(pairs)
        with self._lock:
            if version == self._version:
                self._redactors[service.name] = redactor
        return redactor

    def warm(self, services: Iterable[Service]) -> None:
        """Build every service's redactor now (a few ms each, regex compiles), not in the
        first response that needs one: a streamed reply's first event would wait for it.
        The log filter learns every secret too (a second line of defence)."""
        if self.keystore is None:
            logfilter.use(None)
            return
        pairs: list[tuple[bytes, bytes]] = []
        for service in services:
            if self.redactor_for(service) is not None:  # None: its secret is missing
                pairs.extend(self._secret_pairs(service))
        logfilter.use(Redactor(pairs))


def load_agents(ks: Keystore) -> dict[str, AgentRecord]:
    pairs = [(n, ks.get_internal(n)) for n in ks.internal_names("agent:")]
    return load_records((n, v) for n, v in pairs if v is not None)
