"""External sources, the pure parts: secret references, the keystore's source cache (and the
``source.NAME`` entry namespace), and how one sync's result lands in the cache."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.canary import make_canary
from vaultproxy.errors import SecretMissing, UsageError
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.keystore.cached import cached_entry
from vaultproxy.keystore.synced import SourceCache, SyncedItem
from vaultproxy.keystore.totp import current_code
from vaultproxy.secret import Secret
from vaultproxy.sync.base import Fetched, Ref, RefError, parse_ref
from vaultproxy.sync.run import apply

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = Secret("a test master password")
# No test here is about the KDF: a save keeps FAST (tests/conftest.py's cheap_kdf).
pytestmark = pytest.mark.usefixtures("cheap_kdf")


@pytest.mark.parametrize(("text", "ref"), [
    ("bao:openai#api_key", Ref("bao", "openai", "api_key")),
    ("bao:team/openai", Ref("bao", "team/openai")),
    ("bao:rotating?version=3#api_key", Ref("bao", "rotating", "api_key", 3)),
    ("vw:Item name#password", Ref("vw", "Item name", "password")),
    ("vw:Item #2#password", Ref("vw", "Item #2", "password")),  # the last # splits
    ("vw:GitHub token#my custom field", Ref("vw", "GitHub token", "my custom field")),
])
def test_references_parse(text: str, ref: Ref) -> None:
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(("text", "rule"), [
    ("openai", "must be"),
    ("Bao:x#f", "source name"),
    ("bao:#f", "path must be"),
    ("bao:x#", "field after # is empty"),
    ("bao:x?version=0#f", "whole number"),
    ("bao:x?version=abc#f", "whole number"),
    ("bao:a\nb#f", "control characters"),
    ("bao:" + "p" * 600, "path must be"),
])
def test_bad_references_name_the_rule_never_the_text(text: str, rule: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    assert rule in str(info.value)
    assert text.split(":", 1)[-1] not in str(info.value)


def test_item_key_separates_a_pinned_version_from_the_latest() -> None:
    assert parse_ref("bao:x#f").item_key == "x"
    assert parse_ref("bao:x?version=2#f").item_key == "x?version=2"
    assert parse_ref("bao:x?version=2#f").item == Ref("bao", "x", None, 2)


# -- the keystore ----------------------------------------------------------------------------

def _store(tmp_path: Path) -> Keystore:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return Keystore.create(home / "keystore.enc", PASSWORD, FAST)


def test_source_entries_are_a_reserved_namespace(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    token = make_canary()
    ks.set_field("source.bao", "token", Secret(token))
    ks.save()
    again = Keystore.open(ks.path, PASSWORD)
    entry = again.get("source.bao")
    assert entry is not None and entry.fields["token"].reveal_str() == token
    for bad in ("source.", "source.Bao", "source.bao.x", "sources.bao", "Source.bao", "a.b"):
        with pytest.raises(UsageError):  # twin: only source.NAME widens the name rule
            ks.set_field(bad, "token", Secret("x"))


def test_the_cache_is_encrypted_and_survives_save_open_and_a_workers_view(
        tmp_path: Path) -> None:
    ks = _store(tmp_path)
    value = make_canary()
    item = SyncedItem("openai", 7, 1000.0, {"api_key": Secret(value)})
    ks.put_source_cache("bao", SourceCache({"openai": item}, 1000.0, 1001.0, None))
    ks.save()
    assert value.encode() not in ks.path.read_bytes()
    for again in (Keystore.open(ks.path, PASSWORD), Keystore.view(ks.path, ks.plaintext())):
        got = again.synced_item("bao", "openai")
        assert got is not None and got.version == 7 and got.synced == 1000.0
        assert got.fields["api_key"].reveal_str() == value
        cache = again.source_cache("bao")
        assert cache is not None and (cache.ok, cache.attempt, cache.error) == (1000.0, 1001.0,
                                                                                 None)
    assert value not in repr(item) and value not in repr(ks.source_cache("bao"))


def test_a_keystore_without_a_cache_section_still_opens(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    ks.set_value("openai", Secret("x" * 8))
    ks.save()
    assert b'"synced"' not in ks.plaintext()  # files stay as before until a source syncs
    assert Keystore.open(ks.path, PASSWORD).source_names() == []


def test_cached_entry_takes_one_field_or_all(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    user, pw = make_canary(), make_canary()
    item = SyncedItem("db", 1, 5.0, {"username": Secret(user), "password": Secret(pw)})
    ks.put_source_cache("bao", SourceCache({"db": item}, 5.0, 5.0))
    one = cached_entry(ks, parse_ref("bao:db#password"), "svc")
    assert one.value is not None and one.value.reveal_str() == pw and one.fields == {}
    both = cached_entry(ks, parse_ref("bao:db"), "svc")
    assert both.value is None and sorted(both.fields) == ["password", "username"]
    with pytest.raises(SecretMissing, match="no field 'token'"):
        cached_entry(ks, parse_ref("bao:db#token"), "svc")
    with pytest.raises(SecretMissing, match=r"not synced yet \(run `vaultproxy sync bao`\)"):
        cached_entry(ks, parse_ref("bao:db?version=1#password"), "svc")


# -- applying one sync's result --------------------------------------------------------------

def _fetched(value: str, version: int = 1) -> Fetched:
    return Fetched({"api_key": Secret(value)}, version)


def test_a_sync_caches_items_and_a_repeat_changes_nothing(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    ref = Ref("bao", "openai")
    value = make_canary()
    outcome, dirty = apply(ks, "bao", "openbao", [ref], {ref: _fetched(value)}, 10.0)
    assert dirty and outcome.ok and (outcome.items, outcome.changed) == (1, 1)
    outcome, dirty = apply(ks, "bao", "openbao", [ref], {ref: _fetched(value)}, 20.0)
    assert not dirty and outcome.ok and outcome.changed == 0  # no write, no worker push
    item = ks.synced_item("bao", "openai")
    assert item is not None and item.synced == 10.0  # when this value first arrived
    outcome, dirty = apply(ks, "bao", "openbao", [ref], {ref: _fetched(make_canary(), 2)}, 30.0)
    assert dirty and outcome.changed == 1


def test_a_failed_sync_keeps_the_cache_and_says_why(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    ref = Ref("bao", "openai")
    value = make_canary()
    apply(ks, "bao", "openbao", [ref], {ref: _fetched(value)}, 10.0)
    why = "source bao: GET /v1/secret/data/openai answered 403"
    outcome, dirty = apply(ks, "bao", "openbao", [ref], why, 20.0)
    assert dirty and not outcome.ok and outcome.error == why and outcome.items == 1
    item = ks.synced_item("bao", "openai")
    assert item is not None and item.fields["api_key"].reveal_str() == value
    cache = ks.source_cache("bao")
    assert cache is not None and (cache.ok, cache.attempt, cache.error) == (10.0, 20.0, why)
    _, dirty = apply(ks, "bao", "openbao", [ref], why, 30.0)
    assert not dirty  # the same failure again: nothing new to write
    outcome, dirty = apply(ks, "bao", "openbao", [ref], {ref: _fetched(value)}, 40.0)
    assert dirty and outcome.ok  # recovered: the error is cleared (a write)


def test_an_item_the_source_no_longer_has_is_dropped(tmp_path: Path) -> None:
    """Deleted (or revoked) at the source: the proxy stops injecting it; the twin (the
    source failing as a whole) keeps it, as above."""
    ks = _store(tmp_path)
    a, b = Ref("bao", "a"), Ref("bao", "b")
    apply(ks, "bao", "openbao", [a, b], {a: _fetched(make_canary()),
                                         b: _fetched(make_canary())}, 10.0)
    outcome, dirty = apply(ks, "bao", "openbao", [a, b], {a: _fetched(make_canary())}, 20.0)
    assert dirty and not outcome.ok and outcome.missing == ("b",)
    assert ks.synced_item("bao", "b") is None and ks.synced_item("bao", "a") is not None
    assert outcome.error is not None and "not found at the source" in outcome.error


def test_items_no_service_names_are_dropped(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    a, b = Ref("bao", "a"), Ref("bao", "b")
    apply(ks, "bao", "openbao", [a, b], {a: _fetched("x" * 8), b: _fetched("y" * 8)}, 10.0)
    outcome, dirty = apply(ks, "bao", "openbao", [a], {a: _fetched("x" * 8)}, 20.0)
    assert dirty and outcome.ok and outcome.items == 1
    assert ks.synced_item("bao", "b") is None


# -- TOTP seeds (Bitwarden's totp field): the code valid now, never the seed -----------------

RFC6238_SHA1 = base64.b32encode(b"12345678901234567890").decode()  # RFC 6238 appendix B


@pytest.mark.parametrize(("seed", "at", "code"), [
    (RFC6238_SHA1, 59, "287082"),
    (RFC6238_SHA1.lower()[:8] + " " + RFC6238_SHA1.lower()[8:], 59, "287082"),
    (f"otpauth://totp/acme:me?secret={RFC6238_SHA1}&digits=8", 59, "94287082"),
    (f"otpauth://totp/acme:me?secret={RFC6238_SHA1}&digits=8", 1111111109, "07081804"),
    ("otpauth://totp/x?algorithm=SHA256&digits=8&secret="
     + base64.b32encode(b"12345678901234567890123456789012").decode(), 59, "46119246"),
])
def test_totp_codes_match_rfc_6238(seed: str, at: int, code: str) -> None:
    assert current_code(Secret(seed), "svc", now=at).reveal_str() == code


@pytest.mark.parametrize("seed", ["not base32!", "", "otpauth://hotp/x?secret=GEZDGNBV",
                                  "otpauth://totp/x?secret=GEZDGNBV&digits=12"])
def test_bad_totp_seeds_are_refused_without_quoting_them(seed: str) -> None:
    with pytest.raises(SecretMissing) as info:
        current_code(Secret(seed), "service x: vw:Item", now=59)
    assert "TOTP seed" in str(info.value) and (not seed or seed not in str(info.value))


def test_a_totp_field_injects_the_current_code(tmp_path: Path) -> None:
    ks = _store(tmp_path)
    ref = Ref("vw", "GitHub")
    fetched = Fetched({"totp": Secret(RFC6238_SHA1), "password": Secret("p" * 12)}, "rev-1",
                      frozenset({"totp"}))
    apply(ks, "vw", "bitwarden", [ref], {ref: fetched}, 10.0)
    ks.save()
    again = Keystore.open(ks.path, PASSWORD)  # the marker survives the file
    entry = cached_entry(again, parse_ref("vw:GitHub#totp"), "svc")
    assert entry.value is not None and entry.value.reveal().isdigit()
    assert len(entry.value) == 6 and entry.value.reveal_str() != RFC6238_SHA1
    plain = cached_entry(again, parse_ref("vw:GitHub#password"), "svc")
    assert plain.value is not None and plain.value.reveal_str() == "p" * 12  # twin


def test_credential_health_covers_synced_values(tmp_path: Path) -> None:
    from vaultproxy.health import report

    ks = _store(tmp_path)
    ref = Ref("bao", "team/openai")
    apply(ks, "bao", "openbao", [ref], {ref: Fetched({"api_key": Secret("short"),
                                                      "username": Secret("me")}, 1)}, 1.0)
    result, values = report.build(report.secret_values(ks))
    values.clear()
    [item] = result.items
    assert (item.name, item.field, bool(item.weak_reasons)) == ("bao:team/openai", "api_key", True)
