"""``[health]`` in services.toml: where the credential-health breach check asks (SPEC §9).

```toml
[health]
hibp_url = "https://api.pwnedpasswords.com"   # empty or absent = no breach check
ca_cert = "hibp-ca.pem"                       # extra trust anchor (relative to the home)
allow_loopback = false                        # as for services: the egress policy applies
allow_private = false
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

HEALTH_KEYS = frozenset({"hibp_url", "ca_cert", "allow_loopback", "allow_private"})


class Collector(Protocol):
    def add(self, path: str, message: str) -> None: ...

    def rule(self, path: str, check: Callable[..., object], *args: object) -> bool: ...


def _check_url(url: str, c: Collector) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        c.add("health.hibp_url", "must be an https:// URL")
        return
    if parts.scheme != "https" or not parts.hostname:
        c.add("health.hibp_url", "must be an https:// URL (or empty: no breach check)")
    elif parts.query or parts.fragment or parts.username or parts.password:
        c.add("health.hibp_url", "must have no query, fragment or credentials")
    elif port == 0:
        c.add("health.hibp_url", "must not use port 0")


def check_health(raw: object, c: Collector, base_dir: Path | None,
                 check_ca_file: Callable[[Path], None]) -> None:
    if not isinstance(raw, Mapping):
        c.add("health", "must be a table ([health])")
        return
    for key in raw:
        if key not in HEALTH_KEYS:
            c.add(f"health.{key}", "unknown key")
    url = raw.get("hibp_url", "")
    if not isinstance(url, str):
        c.add("health.hibp_url", "must be a string")
    elif url:
        _check_url(url, c)
    for key in ("allow_loopback", "allow_private"):
        if key in raw and not isinstance(raw[key], bool):
            c.add(f"health.{key}", "must be true or false")
    ca = raw.get("ca_cert")
    if "ca_cert" in raw and (not isinstance(ca, str) or not ca):
        c.add("health.ca_cert", "must be a non-empty file name")
    elif isinstance(ca, str) and base_dir is not None:
        c.rule("health.ca_cert", check_ca_file, base_dir / ca)
