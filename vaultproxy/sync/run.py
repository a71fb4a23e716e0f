"""Sync: pull every secret services take from external sources into the keystore's cache.

One sync of a source: every item its services name (``secret = "SOURCE:PATH#FIELD"``) is
fetched with one login (sync/base.py), then - under the keystore write lock, on top of what
the file holds now - the cache is updated and the keystore saved once, and the proxy's
state change is pushed to every worker (the normal keystore path: workers never sync).

- A source that fails as a whole (unreachable, egress policy, TLS, login, timeout) keeps
  every cached value; its error is recorded and shown by ``GET /v1/sources``.
- An item the source answers "not found" for is dropped from the cache (revoked or deleted
  at the source: the proxy stops injecting it) and reported.
- Items no service names any more are dropped on the source's next good sync.
- The keystore is written only when something changed (a value, a version, the error), so a
  steady ``refresh_seconds`` costs no disk write and no worker push.

Every sync of a source is one audit record (``event = "sync"``, audit/canonical.py).
``Syncer.refresh_loop`` runs the ``refresh_seconds`` refreshes; only the supervisor (the
process with the admin API) runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from vaultproxy.audit.canonical import record_sync
from vaultproxy.ca import trust_with
from vaultproxy.core.wakeup import StateWatch, Wakeup
from vaultproxy.errors import KeystoreError, LockedError, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.cached import ref_of
from vaultproxy.keystore.synced import SourceCache, SyncedItem
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret
from vaultproxy.sync.base import Fetched, Ref, SourceError, SourceSpec, build_source, is_ref

if TYPE_CHECKING:
    from vaultproxy.config.models import Config
    from vaultproxy.config.sources import SourceConfig
    from vaultproxy.core.state import Live, ProxyState

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 30.0  # one source's whole fetch (login + every item); `vaultproxy sync` waits 60 s
TICK = 1.0  # how often the refresh loop looks for a due source


class UnknownSource(VaultproxyError):
    status, code, public = 404, "unknown_source", "no [[source]] with that name"


@dataclass(frozen=True)
class SyncOutcome:
    """What one source's sync did: counts and names, never a value."""

    source: str
    kind: str
    ok: bool
    items: int  # items cached for the source after the sync
    changed: int  # items whose value or version changed (or are new)
    missing: tuple[str, ...] = ()  # item keys the source did not have (dropped)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "kind": self.kind, "ok": self.ok, "items": self.items,
                "changed": self.changed, "missing": list(self.missing), "error": self.error}


def wanted(cfg: Config, only: str | None = None) -> dict[str, list[Ref]]:
    """Source name -> the distinct items its services name (in services.toml order)."""
    out: dict[str, list[Ref]] = {s.name: [] for s in cfg.sources if only in (None, s.name)}
    seen: set[tuple[str, str]] = set()
    for svc in cfg.services:
        if not is_ref(svc.secret_name):
            continue
        ref = ref_of(svc.secret_name).item
        if ref.source in out and (ref.source, ref.item_key) not in seen:
            seen.add((ref.source, ref.item_key))
            out[ref.source].append(ref)
    return out


def trust_file(home: Home, src: SourceConfig) -> Path:
    """System CAs, plus the source's ca_cert."""
    return trust_with(home, src.ca_cert, f"source-{src.name}")


def spec_for(home: Home, src: SourceConfig,
             own: frozenset[tuple[str, int]] = frozenset()) -> SourceSpec:
    return SourceSpec(
        name=src.name, kind=src.kind, url=src.url, auth=src.auth,
        trust_file=trust_file(home, src),
        address=AddressContext(allow_private=src.allow_private,
                               allow_loopback=src.allow_loopback, own_listeners=own),
        mount=src.kv_mount, folder=src.folder,
        extra={"namespace": src.namespace} if src.namespace else {},
    )


def credentials(ks: Keystore, source: str) -> dict[str, Secret]:
    """The fields of keystore entry ``source.<name>`` (empty when it is missing: the source
    then names the fields it needs)."""
    entry = ks.get(f"source.{source}")
    return dict(entry.fields) if entry is not None else {}


async def fetch(spec: SourceSpec, creds: Mapping[str, Secret], refs: Sequence[Ref],
                clients: UpstreamClients) -> dict[Ref, Fetched] | str:
    """The source's items, or why it failed (a message without values)."""
    if not refs:
        return {}
    try:
        source = build_source(spec)
        return await asyncio.wait_for(source.fetch(clients, creds, refs), FETCH_TIMEOUT)
    except SourceError as e:
        return str(e)
    except TimeoutError:
        return f"source {spec.name}: no answer within {FETCH_TIMEOUT:.0f} s"
    except VaultproxyError as e:  # our own errors carry no values
        return f"source {spec.name}: {e}"
    except Exception as e:  # noqa: BLE001 - a bug in a source must not stop the others
        logger.error("source %s: fetch failed with %s", spec.name, type(e).__name__)
        return f"source {spec.name}: internal error ({type(e).__name__})"


def apply(ks: Keystore, name: str, kind: str, refs: Sequence[Ref],
          result: dict[Ref, Fetched] | str, now: float) -> tuple[SyncOutcome, bool]:
    """Put one source's result in ``ks`` (in memory) -> (outcome, whether ``ks`` changed)."""
    old = ks.source_cache(name) or SourceCache()
    if isinstance(result, str):
        cache = SourceCache(old.items, old.ok, now, result)
        ks.put_source_cache(name, cache)
        outcome = SyncOutcome(name, kind, False, len(old.items), 0, (), result)
        return outcome, old.error != result
    items: dict[str, SyncedItem] = {}
    changed, missing = 0, []
    for ref in refs:
        got = result.get(ref)
        if got is None:
            missing.append(ref.item_key)
            continue
        new = SyncedItem(ref.path, got.version, now, dict(got.fields),
                         tuple(sorted(got.totp & got.fields.keys())))
        prev = old.items.get(ref.item_key)
        if prev is not None and prev.same_as(new):
            items[ref.item_key] = prev  # unchanged: keep when it was first fetched
        else:
            items[ref.item_key] = new
            changed += 1
    error = None
    if missing:
        error = (f"source {name}: not found at the source (dropped from the cache): "
                 + ", ".join(missing))
    dropped = len(set(old.items) - set(items))
    dirty = bool(changed or dropped or old.error != error or old.ok is None)
    ks.put_source_cache(name, SourceCache(items, now, now, error))
    return SyncOutcome(name, kind, error is None, len(items), changed, tuple(missing), error), dirty


def _forget_unknown(ks: Keystore, cfg: Config) -> bool:
    """Drop the caches of sources no longer in services.toml (their values too)."""
    known = {s.name for s in cfg.sources}
    return any([ks.remove_source_cache(n) for n in ks.source_names() if n not in known])


class Syncer:
    """The supervisor's sync: one at a time, keystore writes under ``write_lock`` (the admin
    API's, so a sync and a ``PUT /v1/secrets`` never interleave), status kept in memory
    between keystore writes."""

    def __init__(self, write_lock: asyncio.Lock | None = None) -> None:
        self.write_lock = write_lock or asyncio.Lock()
        self.clients = UpstreamClients()
        self.status: dict[str, SourceCache] = {}  # latest outcome per source (no items)
        self._busy = asyncio.Lock()

    async def sync(self, state: ProxyState, only: str | None = None,
                   trigger: str = "api") -> list[SyncOutcome]:
        """Sync every source (or ``only``); LockedError / UnknownSource before any dial."""
        cfg = state.registry.config
        if only is not None and only not in {s.name for s in cfg.sources}:
            raise UnknownSource(f"no [[source]] named {only!r} in services.toml")
        async with self._busy:
            ks = state.session.keystore
            if ks is None:
                raise LockedError()
            plan = wanted(cfg, only)
            configs = {s.name: s for s in cfg.sources if s.name in plan}
            specs = {n: spec_for(state.home, s, state.own_listeners) for n, s in configs.items()}
            results = await asyncio.gather(*(
                fetch(specs[n], credentials(ks, n), refs, self.clients)
                for n, refs in plan.items()
            ))
            if state.session.keystore is not ks:  # locked (or re-unlocked) meanwhile
                raise LockedError()
            async with self.write_lock:
                outcomes, changed = await asyncio.to_thread(
                    self._store, ks, cfg, plan, configs, list(results), only is None)
            if changed:
                state.secrets_changed()  # every worker gets the new cache (the state push)
                await state.settled()
            for o in outcomes:
                cache = ks.source_cache(o.source)
                if cache is not None:
                    self.status[o.source] = SourceCache({}, cache.ok, cache.attempt, o.error)
        for o in outcomes:
            _audit(state, configs.get(o.source), o, trigger)
        return outcomes

    def _store(self, ks: Keystore, cfg: Config, plan: dict[str, list[Ref]],
               configs: Mapping[str, SourceConfig], results: list[dict[Ref, Fetched] | str],
               prune: bool) -> tuple[list[SyncOutcome], bool]:
        """Refresh ``ks`` from disk, apply every result, save once if anything changed ->
        (outcomes, whether the proxy must take the keystore in again)."""
        now = time.time()
        try:
            reread = ks.refresh()  # on top of what the CLI or the admin API wrote meanwhile
        except KeystoreError as e:
            return [SyncOutcome(n, configs[n].kind, False, 0, 0, (), f"source {n}: the "
                                f"keystore could not be re-read: {e}") for n in plan], False
        outcomes, dirty = [], prune and _forget_unknown(ks, cfg)
        for (name, refs), result in zip(plan.items(), results, strict=True):
            outcome, changed = apply(ks, name, configs[name].kind, refs, result, now)
            outcomes.append(outcome)
            dirty = dirty or changed
        if dirty:
            try:
                ks.save()
            except KeystoreError as e:
                logger.error("sync: the keystore could not be written: %s", e)
                return [SyncOutcome(o.source, o.kind, False, o.items, 0, o.missing,
                                    f"source {o.source}: the keystore could not be "
                                    f"written: {e}") for o in outcomes], reread
        return outcomes, dirty or reread

    def last(self, ks: Keystore | None, name: str) -> SourceCache | None:
        """The latest status of ``name``: this process's last sync, else the keystore's."""
        mine = self.status.get(name)
        stored = ks.source_cache(name) if ks is not None else None
        if mine is None:
            return stored
        items = stored.items if stored is not None else {}
        return SourceCache(items, mine.ok, mine.attempt, mine.error)

    def due(self, state: ProxyState, now: float) -> list[str]:
        """Sources whose ``refresh_seconds`` have passed since their last attempt."""
        ks = state.session.keystore
        out = []
        for src in state.registry.config.sources:
            if src.refresh_seconds <= 0:
                continue
            last = self.last(ks, src.name)
            if last is None or last.attempt is None or now - last.attempt >= src.refresh_seconds:
                out.append(src.name)
        return out

    async def refresh_loop(self, live: Live, tick: float = TICK) -> None:
        """Sync each source every ``refresh_seconds`` while unlocked (cancel to stop): a
        look every ``tick`` while some source of the unlocked state refreshes; otherwise
        nothing can be due, and it sleeps until the state changes (reload, unlock, another
        state: core/wakeup.py), then looks a ``tick`` later, as the next tick would have."""
        wakeup = Wakeup()
        watch = StateWatch(live, wakeup)
        try:
            while True:
                state = live.state
                if not _refreshing(state):
                    await wakeup.sleep(None)
                    continue
                await asyncio.sleep(tick)
                state = live.state
                if state is None or state.locked:
                    continue
                for name in self.due(state, time.time()):
                    try:
                        await self.sync(state, name, trigger="refresh")
                    except (LockedError, UnknownSource):
                        break  # locked or reloaded meanwhile: look again next tick
                    except Exception as e:  # noqa: BLE001 - the loop must survive anything
                        logger.error("sync of source %s failed: %s", name, type(e).__name__)
        finally:
            watch.close()

    async def aclose(self) -> None:
        await self.clients.aclose()


def _refreshing(state: ProxyState | None) -> bool:
    """Can a refresh come due in ``state`` (unlocked, a source with ``refresh_seconds``)?"""
    return (state is not None and not state.locked
            and any(src.refresh_seconds > 0 for src in state.registry.config.sources))


def source_warnings(cfg: Config) -> list[str]:
    """The SECURITY lines logged at every start for sources' weakened settings."""
    out = []
    for src in cfg.sources:
        if src.plain_http:
            out.append(f"SECURITY: source {src.name} uses plain http:// (loopback only): its "
                       "credentials and values cross loopback unencrypted")
        if src.allow_loopback:
            out.append(f"SECURITY: source {src.name} may reach loopback addresses "
                       "(allow_loopback)")
        if src.allow_private:
            out.append(f"SECURITY: source {src.name} may reach private addresses "
                       "(allow_private)")
    return out


def _audit(state: ProxyState, src: SourceConfig | None, o: SyncOutcome, trigger: str) -> None:
    host = urlsplit(src.url).hostname if src is not None else None
    if o.ok:
        reason = f"source {o.source}: {o.items} items, {o.changed} changed ({trigger})"
    else:
        reason = f"{o.error} ({trigger})"
    record_sync(state.audit, source=o.source, host=host, ok=o.ok, reason=reason)
