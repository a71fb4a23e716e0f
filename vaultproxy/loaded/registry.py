"""(host, port) -> Service. Pure and immutable: a reload builds a new Registry and swaps it.

Every host in the config is parsed once, at build time, into dictionaries; a lookup only
normalises the host it is given (lowercase, one trailing dot dropped, IDNA, canonical IP)
and does at most two dictionary probes. An exact host beats a wildcard; ``*.example.com``
matches ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from vaultproxy.config.models import Config, Service
from vaultproxy.config.rules import normalize_lookup_host, parse_host


class Registry:
    __slots__ = ("_by_name", "_exact", "_hostnames", "_placeholders", "_wild", "_wild_domains",
                 "config", "services")

    config: Config
    services: tuple[Service, ...]

    def __init__(self, config: Config) -> None:
        exact: dict[tuple[str, int], Service] = {}
        wild: dict[tuple[str, int], Service] = {}
        for svc in config.services:
            for raw in svc.hosts:
                spec = parse_host(raw)
                (wild if spec.wildcard else exact).setdefault((spec.host, spec.port), svc)
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "services", config.services)
        object.__setattr__(self, "_exact", MappingProxyType(exact))
        object.__setattr__(self, "_wild", MappingProxyType(wild))
        object.__setattr__(self, "_hostnames", frozenset(h for h, _ in exact))
        object.__setattr__(self, "_wild_domains", frozenset(h for h, _ in wild))
        object.__setattr__(self, "_by_name",
                           MappingProxyType({s.name: s for s in config.services}))
        object.__setattr__(self, "_placeholders",
                           MappingProxyType({s.placeholder_text: s for s in config.services}))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Registry is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Registry is immutable")

    def __repr__(self) -> str:
        return f"Registry(services={[s.name for s in self.services]!r})"

    @classmethod
    def from_config(cls, cfg: Config) -> Registry:
        return cls(cfg)

    @classmethod
    def empty(cls) -> Registry:
        return cls(Config())

    def lookup(self, host: str, port: int) -> Service | None:
        """The service for a CONNECT target, or None when the host is not registered."""
        h = normalize_lookup_host(host)
        if h is None:
            return None
        found = self._exact.get((h, port))
        if found is not None:
            return found
        _, dot, parent = h.partition(".")
        return self._wild.get((parent, port)) if dot and parent else None

    def by_name(self, name: str) -> Service | None:
        return self._by_name.get(name)

    def placeholders(self) -> dict[str, Service]:
        """Placeholder text -> its service (a fresh dict; the registry stays immutable)."""
        return dict(self._placeholders)

    def is_registered_host(self, host: str) -> bool:
        """Whether any service lists this host, on any port."""
        h = normalize_lookup_host(host)
        if h is None:
            return False
        if h in self._hostnames:
            return True
        _, dot, parent = h.partition(".")
        return bool(dot and parent) and parent in self._wild_domains

    # typed views for the checker; populated in __init__
    _exact: Mapping[tuple[str, int], Service]
    _wild: Mapping[tuple[str, int], Service]
    _hostnames: frozenset[str]
    _wild_domains: frozenset[str]
    _by_name: Mapping[str, Service]
    _placeholders: Mapping[str, Service]
