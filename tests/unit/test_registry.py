"""Registry: (host, port) -> Service, exact beats wildcard, one label per wildcard."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from vaultproxy.config.load import parse_config
from vaultproxy.config.models import Config
from vaultproxy.loaded.registry import Registry


def _cfg() -> Config:
    services = [
        {"name": "exact", "hosts": ["api.example.com", "api.example.com:8443"]},
        {"name": "wild", "hosts": ["*.example.com"]},
        {"name": "wild8443", "hosts": ["*.example.com:8443"], "env": "W_KEY",
         "placeholder": "wild-placeholder"},
        {"name": "ipv4", "hosts": ["10.0.0.5:9000"], "allow_private": True},
        {"name": "ipv6", "hosts": ["[2606:4700::1]", "[::1]:8443"], "allow_loopback": True},
        {"name": "idn", "hosts": ["xn--bcher-kva.example"]},
        {"name": "local", "hosts": ["localhost:8080"]},
    ]
    doc = {"service": [{**s, "mode": "placeholder", "auth": "bearer"} for s in services]}
    return parse_config(tomlkit.dumps(doc), Path("/nonexistent"))


REG = Registry.from_config(_cfg())

LOOKUPS = [
    ("api.example.com", 443, "exact"),
    ("api.example.com", 8443, "exact"),          # exact beats *.example.com:8443
    ("API.Example.COM", 443, "exact"),
    ("api.example.com.", 443, "exact"),
    ("a.example.com", 443, "wild"),
    ("A.EXAMPLE.COM.", 443, "wild"),
    ("a.example.com", 8443, "wild8443"),
    ("a.example.com", 80, None),
    ("example.com", 443, None),                  # the bare domain is not covered
    ("a.b.example.com", 443, None),              # exactly one label
    ("api.example.com", 80, None),
    ("xexample.com", 443, None),
    ("a.example.com..", 443, None),
    ("*.example.com", 443, None),
    (".example.com", 443, None),
    ("10.0.0.5", 9000, "ipv4"),
    ("10.0.0.5", 443, None),
    ("[2606:4700::1]", 443, "ipv6"),
    ("2606:4700::1", 443, "ipv6"),
    ("2606:4700:0:0:0:0:0:1", 443, "ipv6"),
    ("[::1]", 8443, "ipv6"),
    ("::1", 443, None),
    ("bücher.example", 443, "idn"),
    ("BÜCHER.example", 443, "idn"),
    ("xn--bcher-kva.example", 443, "idn"),
    ("localhost", 8080, "local"),
    ("LOCALHOST.", 8080, "local"),
    ("", 443, None),
    (".", 443, None),
    ("a\x00.example.com", 443, None),
    ("api.example.com:443", 443, None),
    ("evil.com/api.example.com", 443, None),
]


@pytest.mark.parametrize(("host", "port", "name"), LOOKUPS, ids=[f"{h}:{p}" for h, p, _ in LOOKUPS])
def test_lookup(host: str, port: int, name: str | None) -> None:
    found = REG.lookup(host, port)
    assert (found.name if found else None) == name


@pytest.mark.parametrize(("host", "expected"), [
    ("api.example.com", True), ("a.example.com", True), ("example.com", False),
    ("a.b.example.com", False), ("10.0.0.5", True), ("[::1]", True), ("localhost", True),
    ("bücher.example", True), ("other.org", False), ("", False),
])
def test_is_registered_host(host: str, expected: bool) -> None:
    assert REG.is_registered_host(host) is expected


def test_by_name_placeholders_services() -> None:
    assert REG.by_name("wild") is REG.services[1]
    assert REG.by_name("nope") is None
    ph = REG.placeholders()
    assert ph["__vault.exact__"].name == "exact"
    assert ph["wild-placeholder"].name == "wild8443"
    assert len(ph) == len(REG.services) == 7
    ph.clear()  # a copy: the registry is unaffected
    assert len(REG.placeholders()) == 7
    assert REG.config.services == REG.services


def test_empty() -> None:
    reg = Registry.empty()
    assert reg.services == ()
    assert reg.lookup("api.example.com", 443) is None
    assert not reg.is_registered_host("api.example.com")
    assert reg.placeholders() == {}


def test_immutable() -> None:
    with pytest.raises(AttributeError):
        REG.services = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        REG._exact = {}  # type: ignore[misc]


def test_lookup_does_no_per_call_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaultproxy.loaded.registry as registry

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("parse_host called at lookup time")

    monkeypatch.setattr(registry, "parse_host", boom)
    assert REG.lookup("a.example.com", 443) is not None
