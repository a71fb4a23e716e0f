"""The config snapshot: everything a request needs from services.toml, built once per (re)load.

Immutable; a reload builds a new one and the proxy swaps it whole. Holds no secret."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vaultproxy.access.enforce import OPEN, ServiceAccess
from vaultproxy.ca import system_ca_file
from vaultproxy.config.load import parse_config
from vaultproxy.config.models import Service
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home
from vaultproxy.loaded.registry import Registry
from vaultproxy.net.egress import AddressContext
from vaultproxy.values.honeytokens import HoneytokenIndex
from vaultproxy.values.placeholders import PlaceholderIndex


@dataclass(frozen=True)
class Snapshot:
    """Registry, placeholder index, address policies and upstream trust, of one config text."""

    registry: Registry
    index: PlaceholderIndex
    passthrough: AddressContext
    service_contexts: dict[str, AddressContext]
    trust_files: dict[str, Path]
    text: str = ""  # the services.toml text it was built from
    # SPEC §10: each service's compiled rules and rate (OPEN: none), and the decoys
    access: dict[str, ServiceAccess] | None = None
    honeytokens: HoneytokenIndex = HoneytokenIndex({})

    def access_of(self, service: Service) -> ServiceAccess:
        return (self.access or {}).get(service.name, OPEN)

    @classmethod
    def build(cls, home: Home, text: str, own: frozenset[tuple[str, int]]) -> Snapshot:
        """Parse ``text`` (ConfigError on a bad one) and build everything from it."""
        return build_snapshot(home, Registry.from_config(parse_config(text, home.path)), own, text)

    def with_own_listeners(self, home: Home, own: frozenset[tuple[str, int]]) -> Snapshot:
        return build_snapshot(home, self.registry, own, self.text)

    def trust_file(self, service: Service) -> Path:
        return self.trust_files[service.name]

    def address_context(self, service: Service | None) -> AddressContext:
        return self.passthrough if service is None else self.service_contexts[service.name]


def build_snapshot(
    home: Home, registry: Registry, own: frozenset[tuple[str, int]], text: str = ""
) -> Snapshot:
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
    trust = build_trust_files(home, registry)
    return Snapshot(registry, index, passthrough, contexts, trust, text,
                    build_access(registry), HoneytokenIndex(
                        {h.name: h.value for h in cfg.honeytoken}))


def build_access(registry: Registry) -> dict[str, ServiceAccess]:
    """Each service's rules compiled once (a service with none is ``OPEN``: no cost)."""
    out: dict[str, ServiceAccess] = {}
    for s in registry.services:
        if s.request_rules or s.default_action != "allow" or s.rate_limit:
            rules = ((r.method, r.path, r.action) for r in s.request_rules)
            out[s.name] = ServiceAccess.build(rules, s.default_action, s.rate_limit)
    return out


def build_trust_files(home: Home, registry: Registry) -> dict[str, Path]:
    """Upstream trust per service: the system store, plus the service's own ca_cert if any."""
    system = system_ca_file(home)
    out: dict[str, Path] = {}
    for service in registry.services:
        if not service.ca_cert:
            out[service.name] = system
            continue
        extra = (home.path / service.ca_cert).read_bytes()
        data = system.read_bytes().rstrip(b"\n") + b"\n" + extra
        # Named by content: a changed ca_cert is a new path, so neither mitmproxy's cached
        # TLS context (keyed by the file name) nor a pooled outbound client keeps the old
        # trust after a reload.
        digest = hashlib.sha256(data).hexdigest()[:16]
        path = home.mitm_confdir / f"trust-{service.name}-{digest}.pem"
        home.mitm_confdir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, data, mode=0o644)  # workers write the same files
        out[service.name] = path
    return out
