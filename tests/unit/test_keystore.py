"""Keystore API: round trips, names, KDF upgrade, password change, write failures."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultproxy.errors import KeystoreError, UsageError
from vaultproxy.keystore import DEFAULT_KDF, Entry, KdfParams, Keystore, open_async, store
from vaultproxy.secret import Secret

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
Canary = Callable[[], str]


@pytest.fixture
def home(tmp_path: Path, canary_watch: Callable[[Path], None]) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    canary_watch(h)
    return h


@pytest.fixture
def fast_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)


@pytest.fixture
def pw(canary: Canary) -> Secret:
    return Secret(canary())


def test_round_trip_values_and_fields(home: Path, pw: Secret, canary: Canary,
                                      fast_floor: None) -> None:
    path = home / "keystore.enc"
    v, user, pwd = canary(), canary(), canary()
    ks = Keystore.create(path, pw, FAST)
    ks.set_value("openai", Secret(v))
    ks.set_field("github", "username", Secret(user))
    ks.set_field("github", "password", Secret(pwd))
    ks.save()

    again = Keystore.open(path, pw)
    assert again.names() == ["github", "openai"]
    openai = again.get("openai")
    assert openai is not None and openai.value is not None
    assert openai.value.reveal_str() == v
    assert openai.fields == {}
    gh = again.get("github")
    assert gh is not None and gh.value is None
    assert {k: s.reveal_str() for k, s in gh.fields.items()} == {"username": user, "password": pwd}
    assert gh.created <= gh.updated
    assert again.get("nope") is None


def test_binary_values_round_trip(home: Path, pw: Secret, fast_floor: None) -> None:
    raw = bytes(range(256))
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value("bin", Secret(raw))
    ks.save()
    got = Keystore.open(home / "keystore.enc", pw).get("bin")
    assert got is not None and got.value is not None and got.value.reveal() == raw


def test_remove_and_update_times(home: Path, pw: Secret, canary: Canary,
                                 monkeypatch: pytest.MonkeyPatch, fast_floor: None) -> None:
    clock = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(Keystore, "clock", staticmethod(lambda: next(clock)))
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value("a", Secret(canary()))
    ks.set_field("a", "user", Secret(canary()))
    entry = ks.get("a")
    assert entry is not None and (entry.created, entry.updated) == (100.0, 200.0)
    assert ks.remove("a") is True
    assert ks.remove("a") is False
    ks.save()
    assert Keystore.open(home / "keystore.enc", pw).names() == []


def test_get_returns_a_copy(home: Path, pw: Secret, canary: Canary) -> None:
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value("a", Secret(canary()))
    entry = ks.get("a")
    assert entry is not None
    entry.fields["x"] = Secret(canary())
    again = ks.get("a")
    assert again is not None and again.fields == {}


@pytest.mark.parametrize("name", ["", "A", "-x", "_x", "a b", "a.b", "a" * 65, "é", "agent:x"])
def test_bad_names_refused(home: Path, pw: Secret, canary: Canary, name: str) -> None:
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    with pytest.raises(UsageError):
        ks.set_value(name, Secret(canary()))
    with pytest.raises(UsageError):
        ks.set_field("ok", name, Secret(canary()))
    assert ks.names() == []


@pytest.mark.parametrize("name", ["a", "0", "a-b_c", "x" * 64])
def test_good_names_accepted(home: Path, pw: Secret, canary: Canary, name: str) -> None:
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value(name, Secret(canary()))
    assert ks.names() == [name]


def test_internal_entries_are_separate(home: Path, pw: Secret, canary: Canary,
                                       fast_floor: None) -> None:
    path = home / "keystore.enc"
    token_hash = canary()
    ks = Keystore.create(path, pw, FAST)
    ks.set_internal("agent:ci-bot", Secret(token_hash))
    with pytest.raises(UsageError):
        ks.set_internal("ci-bot", Secret(canary()))
    ks.save()
    again = Keystore.open(path, pw)
    assert again.names() == []
    assert again.get("agent:ci-bot") is None
    got = again.get_internal("agent:ci-bot")
    assert got is not None and got.reveal_str() == token_hash
    assert again.internal_names("agent:") == ["agent:ci-bot"]
    assert again.remove_internal("agent:ci-bot") is True
    assert again.get_internal("agent:ci-bot") is None


def test_reprs_never_show_values(home: Path, pw: Secret, canary: Canary) -> None:
    value = canary()
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value("a", Secret(value))
    ks.set_field("a", "f", Secret(value))
    entry = ks.get("a")
    assert isinstance(entry, Entry)
    for text in (repr(entry), str(entry), repr(ks), f"{entry}"):
        assert value not in text
    assert "'f'" in repr(entry)


def test_create_refuses_existing_file(home: Path, pw: Secret) -> None:
    path = home / "keystore.enc"
    Keystore.create(path, pw, FAST)
    before = path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        Keystore.create(path, pw, FAST)
    assert path.read_bytes() == before


def test_wrong_password_refused(home: Path, pw: Secret, canary: Canary) -> None:
    path = home / "keystore.enc"
    Keystore.create(path, pw, FAST)
    with pytest.raises(KeystoreError, match="wrong master password") as info:
        Keystore.open(path, Secret(canary()))
    assert "\n" not in str(info.value)


def test_kdf_params_raised_on_save(home: Path, pw: Secret) -> None:
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    assert Keystore.open(path, pw).kdf == FAST  # create writes what it was asked
    ks.save()
    assert ks.kdf == DEFAULT_KDF
    assert Keystore.open(path, pw).kdf == DEFAULT_KDF


def test_kdf_stronger_params_kept(home: Path, pw: Secret, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)
    strong = KdfParams(time_cost=2, memory_kib=16, parallelism=2)
    ks = Keystore.create(home / "keystore.enc", pw, strong)
    ks.save()
    assert Keystore.open(home / "keystore.enc", pw).kdf == strong


def test_kdf_params_out_of_range_refused(home: Path, pw: Secret) -> None:
    with pytest.raises(KeystoreError, match="out of range"):
        Keystore.create(home / "keystore.enc", pw, KdfParams(1, 4, 1))
    assert not (home / "keystore.enc").exists()


def test_change_password_keeps_entries(home: Path, pw: Secret, canary: Canary,
                                       fast_floor: None) -> None:
    path = home / "keystore.enc"
    values = {f"e{i}": canary() for i in range(5)}
    ks = Keystore.create(path, pw, FAST)
    for name, v in values.items():
        ks.set_value(name, Secret(v))
        ks.set_field(name, "f", Secret(v))
    ks.save()
    new = Secret(canary())
    Keystore.open(path, pw).change_password(new)

    with pytest.raises(KeystoreError, match="wrong master password"):
        Keystore.open(path, pw)
    with pytest.raises(KeystoreError, match="wrong master password"):
        Keystore.open(path.with_name("keystore.enc.bak"), pw)  # no file keeps the old slot
    again = Keystore.open(path, new)
    assert again.names() == sorted(values)
    for name, v in values.items():
        e = again.get(name)
        assert e is not None and e.value is not None and e.value.reveal_str() == v
        assert e.fields["f"].reveal_str() == v


def test_change_password_keeps_data_key(home: Path, pw: Secret, canary: Canary,
                                        fast_floor: None) -> None:
    """Re-wrap only: the DEK (and so every entry's encryption key) is unchanged."""
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    dek = bytes(ks._dek)
    ks.change_password(Secret(canary()))
    assert bytes(ks._dek) == dek


def test_save_keeps_backup_of_previous(home: Path, pw: Secret, canary: Canary,
                                       fast_floor: None) -> None:
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    ks.set_value("a", Secret(canary()))
    ks.save()
    first = path.read_bytes()
    ks.set_value("b", Secret(canary()))
    ks.save()
    assert path.with_name("keystore.enc.bak").read_bytes() == first
    assert Keystore.open(path.with_name("keystore.enc.bak"), pw).names() == ["a"]


def test_concurrent_change_is_not_lost(home: Path, pw: Secret, canary: Canary,
                                       fast_floor: None) -> None:
    path = home / "keystore.enc"
    Keystore.create(path, pw, FAST)
    a, b = Keystore.open(path, pw), Keystore.open(path, pw)
    a.set_value("from-a", Secret(canary()))
    a.save()
    b.set_value("from-b", Secret(canary()))
    written = path.read_bytes()
    with pytest.raises(KeystoreError, match="changed by another process"):
        b.save()
    assert path.read_bytes() == written
    assert Keystore.open(path, pw).names() == ["from-a"]


@pytest.mark.parametrize("fail", ["fsync", "replace", "write"])
@pytest.mark.parametrize("nth", [1, 2])  # 1: while writing the .bak, 2: the new keystore
def test_failed_write_leaves_old_file(home: Path, pw: Secret, canary: Canary, fast_floor: None,
                                      monkeypatch: pytest.MonkeyPatch, fail: str,
                                      nth: int) -> None:
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    ks.set_value("a", Secret(canary()))
    ks.save()
    before = sorted(p.name for p in home.iterdir())
    old = path.read_bytes()

    real = getattr(os, fail)
    calls = []

    def boom(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == nth:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(os, fail, boom)
    ks.set_value("b", Secret(canary()))
    with pytest.raises(KeystoreError, match="cannot write"):
        ks.save()
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in home.iterdir()) == before  # no temp left behind
    assert Keystore.open(path, pw).names() == ["a"]


def test_stale_temp_files_are_cleaned(home: Path, pw: Secret, fast_floor: None) -> None:
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    stale = home / ".keystore.enc.deadbeef.tmp"
    stale.write_bytes(b"half")
    ks.save()
    assert not stale.exists()


def test_open_async(home: Path, pw: Secret, canary: Canary, fast_floor: None) -> None:
    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    ks.set_value("a", Secret(canary()))
    ks.save()
    assert asyncio.run(open_async(path, pw)).names() == ["a"]
    assert asyncio.run(Keystore.open_async(path, pw)).names() == ["a"]


def test_unknown_slot_type_opens_but_is_not_rewritten(home: Path, pw: Secret) -> None:
    from vaultproxy.keystore import format as fmt

    path = home / "keystore.enc"
    ks = Keystore.create(path, pw, FAST)
    ks._slots = (*ks._slots, fmt.Slot(9, b"future"))
    with pytest.raises(KeystoreError, match="cannot rewrite"):
        ks.save()


def test_missing_home_and_keystore(tmp_path: Path, pw: Secret) -> None:
    with pytest.raises(KeystoreError, match="does not exist; run `vaultproxy init"):
        Keystore.open(tmp_path / "nohome" / "keystore.enc", pw)
    h = tmp_path / "empty"
    h.mkdir(mode=0o700)
    with pytest.raises(KeystoreError, match="no keystore at"):
        Keystore.open(h / "keystore.enc", pw)
    assert os.listdir(h) == []


def test_refresh_picks_up_another_process_write(home: Path, pw: Secret, fast_floor: None) -> None:
    path = home / "keystore.enc"
    running = Keystore.create(path, pw, FAST)
    assert running.refresh() is False  # nothing changed on disk
    cli = Keystore.open(path, pw)
    cli.set_value("new", Secret("written-by-the-cli"))
    cli.save()
    assert running.get("new") is None
    assert running.refresh() is True
    entry = running.get("new")
    assert entry is not None and entry.value is not None
    assert entry.value.reveal() == b"written-by-the-cli"
    running.set_value("api", Secret("written-by-the-api"))
    running.save()  # no "changed by another process": it is on top of the CLI's write
    assert {"new", "api"} <= set(Keystore.open(path, pw).names())


def test_refresh_after_passwd_elsewhere_keeps_the_data_key(
    home: Path, pw: Secret, fast_floor: None
) -> None:
    path = home / "keystore.enc"
    running = Keystore.create(path, pw, FAST)
    other = Keystore.open(path, pw)
    other.change_password(Secret("a-new-password"))
    assert running.refresh() is True
    running.set_value("x", Secret("value-x"))
    running.save()
    assert "x" in Keystore.open(path, Secret("a-new-password")).names()
    with pytest.raises(KeystoreError, match="wrong master password"):
        Keystore.open(path, pw)


def test_refresh_refuses_a_foreign_keystore_and_changes_nothing(
    home: Path, tmp_path: Path, pw: Secret, fast_floor: None
) -> None:
    path = home / "keystore.enc"
    running = Keystore.create(path, pw, FAST)
    running.set_value("mine", Secret("my-value"))
    running.save()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    foreign = Keystore.create(elsewhere / "keystore.enc", pw, FAST)  # same password, new key
    foreign.set_value("theirs", Secret("their-value"))
    foreign.save()
    path.write_bytes((elsewhere / "keystore.enc").read_bytes())
    with pytest.raises(KeystoreError, match="not the keystore this proxy unlocked"):
        running.refresh()
    assert running.names() == ["mine"]
