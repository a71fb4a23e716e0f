"""The session: what is secret and lives only while the proxy is unlocked.

The unlocked keystore, the agents' token hashes read from it, and the per-service response
redactors built from its secrets and from what was minted (below). ``lock()`` drops them
all and wipes the keystore's copy. Nothing here reads services.toml: the caller passes the
snapshot's services in.

Redaction covers every value for as long as it may be valid (SPEC §5):

* **Minted credentials** (SPEC §4.1): the token cache (mint/cache.py) calls ``add_minted``
  with every token, cookie value, CSRF token and rotated field a mint produced, and its
  expiry, before any request uses it (with ``--workers N`` the supervisor pushes the same
  call to every worker first, engine/tokens.py). Each is redacted until it expires (plus
  ``EXPIRY_GRACE`` for clock skew; one with no stated expiry, such as a session cookie, until
  the keystore is locked or the process ends), however many were minted since: a hostile
  upstream that forces re-mints with 401s cannot push an old, still valid token out.
* **Retired values**: what a rotation or removal replaced (keystore ``retired``, kept
  encrypted across restarts), for ``[proxy] retired_redact_days`` (``retired_days`` here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from vaultproxy.access.agents import AgentRecord, load_records
from vaultproxy.config.models import Service
from vaultproxy.config.refs import is_ref
from vaultproxy.config.signed import PUBLIC_FIELDS
from vaultproxy.errors import LockedError, SecretMissing
from vaultproxy.keystore import Entry, Keystore
from vaultproxy.keystore.cached import cached_entry, ref_of
from vaultproxy.values import logfilter
from vaultproxy.values.minted_values import EXPIRY_GRACE, MintedValues, RedactorChain
from vaultproxy.values.redact import Redactor

__all__ = ["EXPIRY_GRACE", "Session", "load_agents", "retired_owner"]

DAY = 86400.0


def retired_owner(secret_name: str) -> str:
    """The keystore's name for what a service's ``secret`` names (its retired values are
    filed under it): the entry name, or ``SOURCE:ITEM`` for a synced item."""
    if is_ref(secret_name):
        ref = ref_of(secret_name)
        return f"{ref.source}:{ref.item_key}"
    return secret_name


class Session:
    def __init__(self) -> None:
        self.keystore: Keystore | None = None
        self.agents: dict[str, AgentRecord] = {}
        self._redactors: dict[str, Redactor] = {}  # per service: static + minted, chained
        self._static: dict[str, Redactor] = {}  # per service: keystore and retired values
        self._minted = MintedValues()
        self._version = 0  # bumped by add_minted: a redactor built before it is not kept
        self._lock = threading.Lock()
        self.retired_days: float = 30.0  # [proxy] retired_redact_days (set by ProxyState)
        self.clock: Callable[[], float] = time.time

    @property
    def locked(self) -> bool:
        return self.keystore is None

    def install(self, ks: Keystore) -> None:
        """Serve from ``ks`` (an opened keystore, or a worker's read-only view of one)."""
        agents = load_agents(ks)
        with self._lock:
            old, self.keystore = self.keystore, ks
            self.agents = agents
            self._redactors.clear()
            self._static.clear()
        _forget_shared(old)
        _forget_shared(ks)

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
            self._static.clear()
            self._minted.clear()
        _forget_shared(ks)
        # ``Keystore.wipe``: every secret the keystore held overwritten, and every later edit
        # or save on it refused; a write under way in another thread finishes, then wipes
        wipe = getattr(ks, "wipe", None)  # (a test's stand-in keystore may lack it)
        if callable(wipe):
            wipe()

    def secrets_changed(self) -> None:
        ks = self.keystore
        agents = load_agents(ks) if ks is not None else {}
        with self._lock:
            self.agents = agents
            self._redactors.clear()
            self._static.clear()
        _forget_shared(ks)

    def forget_redactors(self) -> None:
        """The services changed (a reload): redactors are rebuilt on next use (a group of
        minted values only if its placeholder changed), and so are the keystore's shared
        entries (with what the injection made of them for the services that were)."""
        with self._lock:
            self._redactors.clear()
            self._static.clear()
        _forget_shared(self.keystore)

    def add_minted(
        self, service: str, secrets: Iterable[bytes], expires_at: float | None = None
    ) -> bool:
        """Redact ``secrets`` (a minted token, cookie value, CSRF token, rotated field) in
        ``service``'s responses until ``expires_at`` (None: while unlocked). Values already
        expired are dropped here. True if anything new was added."""
        now = self.clock()
        with self._lock:
            changed = self._minted.add(service, secrets, expires_at, now)
            if changed:
                self._version += 1
                self._redactors.pop(service, None)
            return changed

    def minted_values(self) -> list[tuple[str, bytes, float | None]]:
        """Every minted value still redacted: (service, value, expires_at). A new worker
        process starts from these (engine/workers.py)."""
        with self._lock:
            return list(self._minted.items())

    def entry_for(self, service: Service) -> Entry:
        """The service's entry, read-only: every caller only reads it (for a keystore
        entry, ``Keystore.get_shared``'s copy, shared while the entry is unchanged)."""
        ks = self.keystore
        if ks is None:
            raise LockedError()
        # (``service.secret_name`` and ``is_ref(name)``, inline: every injected request)
        name = service.secret or service.name
        if ":" in name:  # "SOURCE:PATH#FIELD": the source cache (SPEC §9)
            return cached_entry(ks, ref_of(name), service.name)
        entry = ks.get_shared(name)
        if entry is None:
            raise SecretMissing(f"keystore has no entry for service {service.name}")
        return entry

    def _secret_pairs(self, service: Service, retired: bool = True
                      ) -> list[tuple[bytes, bytes]]:
        """(secret, placeholder) for each secret of the service's entry (not ``username``, nor
        the ids in ``config.signed.PUBLIC_FIELDS``), and its retired values;
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
        ks = self.keystore
        if retired and ks is not None and self.retired_days > 0:
            since = self.clock() - self.retired_days * DAY
            skip = frozenset({"username", *public})
            for value in ks.retired_values(retired_owner(service.secret_name), since, skip):
                if len(value) >= 4:
                    pairs.append((value.reveal(), placeholder))
        return pairs

    def redactor_for(self, service: Service) -> Redactor | None:
        """The response redactor for a service's secret, or None when locked/missing: its
        keystore and retired values, chained with its minted values' group redactors."""
        cached = self._redactors.get(service.name)
        if cached is not None:
            return cached
        version = self._version
        static = self._static.get(service.name)
        if static is None:
            try:
                static = Redactor(self._secret_pairs(service))
            except (LockedError, SecretMissing):
                return None
        placeholder = service.placeholder_text.encode()
        with self._lock:
            groups = self._minted.redactors(service.name, placeholder)
            self._static.setdefault(service.name, static)
            redactor = RedactorChain([static, *groups]) if groups else static
            if version == self._version:
                self._redactors[service.name] = redactor
        return redactor

    def warm(self, services: Iterable[Service]) -> None:
        """Build every service's redactor now (a few ms each, regex compiles), not in the
        first response that needs one: a streamed reply's first event would wait for it.
        The log filter learns every keystore secret too (a second line of defence; not the
        minted or retired values, which would make it as costly as every redactor)."""
        if self.keystore is None:
            logfilter.use(None)
            return
        pairs: list[tuple[bytes, bytes]] = []
        for service in services:
            if self.redactor_for(service) is not None:  # None: its secret is missing
                pairs.extend(self._secret_pairs(service, retired=False))
        logfilter.use(Redactor(pairs))


def _forget_shared(ks: Keystore | None) -> None:
    """``ks.forget_shared()``: a lock, an unlock, a reload or a secret written drops every
    shared entry and what the injection made of it (``SharedEntry.made``)."""
    forget = getattr(ks, "forget_shared", None)  # (a test's stand-in keystore may lack it)
    if callable(forget):
        forget()


def load_agents(ks: Keystore) -> dict[str, AgentRecord]:
    pairs = [(n, ks.get_internal(n)) for n in ks.internal_names("agent:")]
    return load_records((n, v) for n, v in pairs if v is not None)
