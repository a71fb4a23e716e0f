"""Redaction by lifetime, the pure parts: the keystore's ``retired`` section (what a
rotation, removal or sync replaced, encrypted, across saves, pruned by age, readable by and
from keystores without it), the session's minted values (until they expire, no count limit),
each cookie value of a session's jar, and decoders that refuse what does not decode."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from vaultproxy.config.models import Service
from vaultproxy.errors import UpstreamProtocol
from vaultproxy.keystore import KdfParams, Keystore, entries, store
from vaultproxy.keystore.synced import SourceCache, SyncedItem
from vaultproxy.loaded.session import EXPIRY_GRACE, Session, retired_owner
from vaultproxy.mint.base import Minted
from vaultproxy.mint.login import cookie_values
from vaultproxy.net.decoding import Undecodable, decoder_for
from vaultproxy.secret import Secret

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
Canary = Callable[[], str]


@pytest.fixture
def ks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
       canary_watch: Callable[[Path], None]) -> Keystore:
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    canary_watch(home)
    return Keystore.create(home / "keystore.enc", Secret("pw"), FAST)


def reopen(ks: Keystore) -> Keystore:
    return Keystore.open(ks.path, Secret("pw"))


def values(ks: Keystore, owner: str) -> list[bytes]:
    return [v.reveal() for v in ks.retired_values(owner, 0.0)]


# --- the keystore's retired section -------------------------------------------------------------


def test_a_rotation_retires_the_old_value_encrypted_across_saves(ks: Keystore,
                                                                 canary: Canary) -> None:
    old, new = canary(), canary()
    ks.set_value("api", Secret(old))
    ks.set_value("api", Secret(old))  # the same value again: nothing retired
    assert values(ks, "api") == []
    ks.set_value("api", Secret(new))
    ks.save()
    again = reopen(ks)
    assert values(again, "api") == [old.encode()]
    assert old.encode() not in ks.path.read_bytes()  # only inside the AES-GCM body


def test_fields_and_removal_retire_every_value(ks: Keystore, canary: Canary) -> None:
    user, pw1, pw2 = canary(), canary(), canary()
    ks.set_field("login", "username", Secret(user))
    ks.set_field("login", "password", Secret(pw1))
    ks.set_field("login", "password", Secret(pw2))
    assert values(ks, "login") == [pw1.encode()]
    assert ks.remove("login")
    assert sorted(values(ks, "login")) == sorted([pw1.encode(), pw2.encode(), user.encode()])


def test_a_sync_that_changes_or_drops_a_value_retires_it(ks: Keystore, canary: Canary) -> None:
    a1, a2, b = canary(), canary(), canary()
    item = SyncedItem("team/a", 1, 1.0, {"key": Secret(a1)})
    gone = SyncedItem("team/b", 1, 1.0, {"key": Secret(b)})
    ks.put_source_cache("bao", SourceCache({"team/a": item, "team/b": gone}))
    ks.put_source_cache("bao", SourceCache({"team/a": SyncedItem("team/a", 2, 2.0,
                                                                 {"key": Secret(a2)})}))
    assert values(ks, "bao:team/a") == [a1.encode()]
    assert values(ks, "bao:team/b") == [b.encode()]
    assert retired_owner("bao:team/a#key") == "bao:team/a"
    assert retired_owner("openai") == "openai"


def test_a_save_drops_what_is_older_than_retired_days(ks: Keystore, canary: Canary,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(Keystore, "clock", staticmethod(lambda: now[0]))
    ks.set_value("a", Secret(canary()))
    ks.set_value("a", Secret(canary()))  # retired at t0
    now[0] += 10 * 86400
    ks.set_value("a", Secret(canary()))  # retired at t0 + 10 days
    ks.retired_days = 5
    ks.save()
    assert len(values(reopen(ks), "a")) == 1
    ks.retired_days = 0  # 0: nothing kept, nothing retired any more
    ks.set_value("a", Secret(canary()))
    ks.save()
    assert values(reopen(ks), "a") == [] and ks.retired_count() == 0


def test_keystores_without_the_section_still_open_and_old_readers_ignore_it(
    ks: Keystore, canary: Canary
) -> None:
    ks.set_value("a", Secret(canary()))
    plain = ks.plaintext()
    doc = json.loads(bytes(plain))
    assert "retired" not in doc  # written only when there is something retired
    ks.set_value("a", Secret(canary()))
    doc = json.loads(bytes(ks.plaintext()))
    assert set(doc["retired"][0]) == {"owner", "field", "value", "retired"}
    del doc["retired"]  # what a keystore written before this section looks like
    body = entries.decode(json.dumps(doc).encode())
    assert body.retired == [] and sorted(body.entries) == ["a"]
    with pytest.raises(Exception, match="unreadable"):
        entries.decode(json.dumps({**doc, "retired": [{"owner": 1}]}).encode())


# --- minted values: until they expire --------------------------------------------------------


def test_minted_values_stay_until_they_expire_with_no_count_limit() -> None:
    s = Session()
    now = [1000.0]
    s.clock = lambda: now[0]
    first = b"tok-first-0000"
    s.add_minted("svc", [first], expires_at=2000.0)
    for i in range(50):  # a hostile upstream forcing re-mints
        s.add_minted("svc", [b"tok-%04d-xxxxxxx" % i], expires_at=2000.0 + i)
    s.add_minted("svc", [b"session-cookie-value"], None)
    kept = {v for _svc, v, _u in s.minted_values()}
    assert first in kept and len(kept) == 52
    now[0] = 2000.0 + EXPIRY_GRACE + 10.5  # the first twelve have expired (plus grace)
    s.add_minted("svc", [b"tok-later-xxxxxxx"], expires_at=None)
    kept = {v for _svc, v, _u in s.minted_values()}
    # Dropped a group at a time (minted_values.GROUP), once all of it has expired.
    assert first not in kept and b"tok-0011-xxxxxxx" in kept and len(kept) < 52
    assert b"session-cookie-value" in kept  # no stated expiry: kept while unlocked
    s.lock()
    assert s.minted_values() == []


def test_each_cookie_value_is_redacted_on_its_own() -> None:
    jar = 'sid=lt_0123456789abcdef; theme=dark; q="quoted-value-1"; p=a%3Db%3Dcccccccc'
    got = {v.reveal() for v in cookie_values(jar)}
    assert got == {b"lt_0123456789abcdef", b'"quoted-value-1"', b"quoted-value-1",
                   b"a%3Db%3Dcccccccc", b"a=b=cccccccc"}
    minted = Minted(Secret(jar), None, headers=(("Cookie", Secret(jar)),),
                    redact_also=cookie_values(jar))
    assert b"lt_0123456789abcdef" in minted.secrets() and b"dark" not in minted.secrets()


def test_the_redactor_covers_minted_and_retired_values(ks: Keystore, canary: Canary) -> None:
    old, new = canary(), canary()
    ks.set_value("svc", Secret(old))
    ks.set_value("svc", Secret(new))
    s = Session()
    s.install(ks)
    service = Service.model_validate({"name": "svc", "hosts": ["svc.test"], "auth": "bearer",
                                      "mode": "host_inject"})
    s.add_minted("svc", [b"lt_minted_token_value"], None)
    r = s.redactor_for(service)
    assert r is not None
    out = r.redact(f"{old} {new} lt_minted_token_value".encode())
    assert out == b"__vault.svc__ __vault.svc__ __vault.svc__"
    s.retired_days = 0  # the twin: not redacting retired values, the old one passes
    s.forget_redactors()
    r = s.redactor_for(service)
    assert r is not None and old.encode() in r.redact(old.encode())


def test_a_retired_username_is_not_redacted(ks: Keystore, canary: Canary) -> None:
    ks.set_field("svc", "username", Secret("alice-the-admin"))
    ks.set_field("svc", "username", Secret("bob-the-operator"))
    ks.set_field("svc", "password", Secret(canary()))
    s = Session()
    s.install(ks)
    service = Service.model_validate({"name": "svc", "hosts": ["svc.test"], "auth": "basic",
                                      "mode": "host_inject"})
    r = s.redactor_for(service)
    assert r is not None and r.redact(b"alice-the-admin") == b"alice-the-admin"


# --- decoders: what does not decode is 502 upstream_protocol ---------------------------------


def _decode(coding: str, body: bytes, split: int | None = None) -> bytes:
    dec = decoder_for(coding)
    assert dec is not None
    parts = [body] if split is None else [body[:split], body[split:]]
    return b"".join(dec(p) for p in parts) + dec(b"")


BODY = b'{"k": "value"}' * 40


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate
    ("br", brotli.compress), ("zstd", zstandard.ZstdCompressor().compress),
])
def test_a_valid_stream_decodes_whole_and_split(coding: str,
                                                encode: Callable[[bytes], bytes]) -> None:
    data = encode(BODY)
    assert _decode(coding, data) == BODY
    assert _decode(coding, data, len(data) // 2) == BODY


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress),
    ("zstd", zstandard.ZstdCompressor().compress),
])
@pytest.mark.parametrize("split", [None, 0])
def test_trailing_garbage_is_upstream_protocol(
    coding: str, encode: Callable[[bytes], bytes], split: int | None
) -> None:
    data = encode(BODY)
    cut = None if split is None else len(data)  # garbage in a chunk of its own
    with pytest.raises(UpstreamProtocol):
        _decode(coding, data + b"trailing garbage bytes", cut)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_corrupt_or_cut_short_is_upstream_protocol(coding: str) -> None:
    data = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](BODY)
    with pytest.raises(Undecodable):
        _decode(coding, data[: len(data) // 2])  # cut short
    with pytest.raises(UpstreamProtocol):
        _decode(coding, data[:3] + b"\xff" * 40)  # corrupt


def test_two_gzip_members_still_decode() -> None:
    two = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert _decode("gzip", two) == b"a" * 10 + b"b" * 10


# --- the chain of redactors and the workers' redact frame -----------------------------------


def test_a_chain_streams_exactly_as_it_redacts_whole() -> None:
    import base64

    from vaultproxy.values.minted_values import RedactorChain
    from vaultproxy.values.redact import Redactor

    secrets = [b"lt_aaaaaaaaaaaaaaaa", b"lt_bbbbbbbbbbbbbbbb", b"lt_cccc/cccc cccc+c"]
    chain = RedactorChain([Redactor([(s, b"__vault.x__")]) for s in secrets])
    body = (b'{"a": "lt_aaaaaaaaaaaaaaaa", "b": "' + base64.b64encode(secrets[1])
            + b'", "c": "lt_cccc\\/cccc%20cccc%2Bc"} tail')
    whole = chain.redact(body)
    assert all(s not in whole for s in secrets) and whole.count(b"__vault.x__") == 3
    for step in (1, 3, 7, 64):
        feed = chain.stream()
        out = b"".join(feed(body[i:i + step]) for i in range(0, len(body), step)) + feed(b"")
        assert out == whole


def test_the_redact_frame_round_trips_into_a_workers_session() -> None:
    from vaultproxy.engine.channel import _PREFIX
    from vaultproxy.engine.tokens import apply_redact, redact_frame

    values = [("oc", b"lt_token_value_0001", 1e10), ("sess", b"lt_cookie_value_01", None)]
    data = redact_frame(values)
    hlen, plen = _PREFIX.unpack(data[:_PREFIX.size])
    assert json.loads(data[_PREFIX.size:_PREFIX.size + hlen]) == {"op": "redact", "n": 0}
    payload = bytearray(data[_PREFIX.size + hlen:])

    class _State:
        session = Session()

    state = _State()
    assert apply_redact(state, payload) == {"oc", "sess"}  # type: ignore[arg-type]
    assert sorted(state.session.minted_values()) == sorted(values)
    assert payload == bytearray(len(payload))  # wiped
