"""Credential health, the pure parts: weak rules, reuse by per-report HMAC fingerprints, the
HIBP range answer parsing and the 5-character split, [health] validation."""

from __future__ import annotations

import hashlib

import pytest

from vaultproxy.config.load import build
from vaultproxy.errors import ConfigError
from vaultproxy.health import hibp, report
from vaultproxy.health.strength import weak_reasons
from vaultproxy.secret import Secret


@pytest.mark.parametrize(("value", "reasons"), [
    ("Sh0rt!", ["short"]),
    ("alllowercaseletters", ["few_classes"]),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaa", ["repetitive"]),
    ("abab", ["short", "few_classes", "repetitive"]),
    ("0123456789abcdef0123456789abcdef01234567", []),  # 40 hex digits: long, fine
    ("sk-proj-Xk29dkLq02mZpQ71aaB", []),
    ("Correct-Horse-9", []),
    ("1234567890123", ["few_classes"]),
])
def test_weak_rules(value: str, reasons: list[str]) -> None:
    assert weak_reasons(value.encode()) == reasons


def _values(pairs: list[tuple[str, str | None, str]]) -> list[tuple[str, str | None, Secret]]:
    return [(n, f, Secret(v)) for n, f, v in pairs]


def test_reuse_is_found_and_distinct_values_are_not() -> None:
    rep, by_label = report.build(_values([
        ("a", None, "vpcanary_same-value-1234"), ("b", "password", "vpcanary_same-value-1234"),
        ("c", None, "vpcanary_other-value-5678")]))
    items = {i.label: i for i in rep.items}
    assert items["a"].reused_with == ["b.password"]
    assert items["b.password"].reused_with == ["a"]
    assert items["c"].reused_with == []
    assert set(by_label) == {"a", "b.password", "c"}


def test_report_dict_has_no_value_or_fingerprint() -> None:
    value = "vpcanary_0123456789abcdef01"
    rep, _ = report.build(_values([("a", None, value), ("b", None, value)]))
    text = repr(rep.as_dict())
    assert value not in text
    assert hashlib.sha1(value.encode()).hexdigest()[:10] not in text.lower()
    assert hashlib.sha256(value.encode()).hexdigest()[:10] not in text.lower()


def test_split_hash_and_listed() -> None:
    prefix, suffix = hibp.split_hash(b"password")
    assert prefix + suffix == hashlib.sha1(b"password").hexdigest().upper()
    assert len(prefix) == 5 and len(suffix) == 35
    body = f"0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n{suffix}:3861493\r\n"
    assert hibp.listed(body, suffix)
    assert not hibp.listed(body.replace(suffix, "F" * 35), suffix)  # twin: not listed
    assert not hibp.listed(f"{suffix}:0\r\n", suffix)  # a padding line is not a breach
    assert hibp.listed(f"{suffix.lower()}:2", suffix)


def _health_problems(table: str) -> list[str]:
    import tomllib

    try:
        build(tomllib.loads(table), None)
    except ConfigError as e:
        return e.problems
    return []


def test_health_settings_validation() -> None:
    assert _health_problems('[health]\nhibp_url = "https://api.pwnedpasswords.com"\n') == []
    assert _health_problems('[health]\nhibp_url = ""\n') == []
    assert _health_problems("") == []
    assert _health_problems('[health]\nhibp_url = "http://x.test"\n') == [
        "health.hibp_url: must be an https:// URL (or empty: no breach check)"]
    assert _health_problems('[health]\nhibp_url = "https://u:p@x.test"\n') == [
        "health.hibp_url: must have no query, fragment or credentials"]
    assert _health_problems("[health]\nallow_loopback = 1\nx = 2\n") == [
        "health.x: unknown key", "health.allow_loopback: must be true or false"]
