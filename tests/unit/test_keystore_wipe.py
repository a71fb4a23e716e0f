"""Locking wipes the keystore's copy of every secret (``Keystore.wipe``, called by
``Session.lock``) and loses nothing: the file stays as the last complete save left it, a write
under way in another thread finishes before the wipe reaches the values it is writing, and a
write that starts after the lock refuses with a KeystoreError naming the fix.

Real keystores on disk (a low KDF cost), real threads; canary values throughout."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import KdfParams, Keystore, atomic, store
from vaultproxy.keystore.synced import SourceCache, SyncedItem
from vaultproxy.loaded.session import Session
from vaultproxy.secret import Secret

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
Canary = Callable[[], str]


@pytest.fixture
def path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         canary_watch: Callable[[Path], None]) -> Path:
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    canary_watch(home)
    return home / "keystore.enc"


def _filled(path: Path, canary: Canary) -> tuple[Keystore, dict[str, str]]:
    """A keystore holding a canary in every place one can be: a value, fields, an internal
    entry, a synced item's field, a retired value; saved, then opened again from the file."""
    ks = Keystore.create(path, Secret("pw"), FAST)
    want = {"value": canary(), "field": canary(), "internal": canary(), "synced": canary(),
            "old": canary(), "new": canary()}
    ks.set_value("api", Secret(want["value"]))
    ks.set_field("login", "password", Secret(want["field"]))
    ks.set_internal("agent:bot", Secret(want["internal"]))
    ks.put_source_cache("bao", SourceCache({"team/a": SyncedItem(
        "team/a", 1, 1.0, {"key": Secret(want["synced"])})}))
    ks.set_value("rot", Secret(want["old"]))
    ks.set_value("rot", Secret(want["new"]))  # "old" is retired
    ks.save()
    return Keystore.open(path, Secret("pw")), want


def _held(ks: Keystore) -> list[Secret]:
    """The Secret objects the keystore holds, found through its public readers."""
    out: list[Secret] = []
    for name in ks.names():
        entry = ks.get(name)
        assert entry is not None
        out += [s for s in (entry.value, *entry.fields.values()) if s is not None]
    out += [s for n in ks.internal_names() if (s := ks.get_internal(n)) is not None]
    item = ks.synced_item("bao", "team/a")
    assert item is not None
    out += list(item.fields.values())
    out += ks.retired_values("rot", 0.0)
    return out


def test_a_lock_wipes_every_secret_the_keystore_held(path: Path, canary: Canary) -> None:
    ks, want = _filled(path, canary)
    held = _held(ks)
    dek = ks._dek
    assert sorted(s.reveal().decode() for s in held) == sorted(want.values())
    before = path.read_bytes()
    session = Session()
    session.install(ks)
    session.lock()
    assert session.locked and ks.wiped
    assert [s.reveal() for s in held] == [b""] * len(held)
    assert not any(dek) and ks.names() == [] and ks.retired_count() == 0
    # loses nothing: the file is as it was and opens with every value
    assert path.read_bytes() == before
    again = Keystore.open(path, Secret("pw"))
    assert sorted(s.reveal().decode() for s in _held(again)) == sorted(want.values())


def test_without_a_lock_nothing_is_wiped(path: Path, canary: Canary) -> None:
    """The twin: installing, refreshing, a secrets change and a reload keep every value."""
    ks, want = _filled(path, canary)
    held = _held(ks)
    session = Session()
    session.install(ks)
    session.refresh()
    session.secrets_changed()
    session.forget_redactors()
    assert not ks.wiped
    assert sorted(s.reveal().decode() for s in held) == sorted(want.values())
    ks.set_value("more", Secret(canary()))
    ks.save()  # still writable


@pytest.mark.parametrize("write", ["set_value", "set_field", "remove", "set_internal",
                                   "remove_internal", "put_source_cache", "save", "refresh",
                                   "plaintext", "change_password"])
def test_a_write_after_the_lock_refuses_and_changes_nothing(
        path: Path, canary: Canary, write: str) -> None:
    ks, _ = _filled(path, canary)
    before = path.read_bytes()
    session = Session()
    session.install(ks)
    session.lock()
    calls: dict[str, Callable[[], object]] = {
        "set_value": lambda: ks.set_value("api", Secret(canary())),
        "set_field": lambda: ks.set_field("login", "password", Secret(canary())),
        "remove": lambda: ks.remove("api"),
        "set_internal": lambda: ks.set_internal("agent:x", Secret(canary())),
        "remove_internal": lambda: ks.remove_internal("agent:bot"),
        "put_source_cache": lambda: ks.put_source_cache("bao", SourceCache()),
        "save": ks.save,
        "refresh": ks.refresh,
        "plaintext": ks.plaintext,
        "change_password": lambda: ks.change_password(Secret("pw2")),
    }
    with pytest.raises(KeystoreError, match="locked meanwhile.*unlock"):
        calls[write]()
    assert path.read_bytes() == before
    assert ks.names() == []


def test_a_lock_during_a_save_lets_it_finish_then_wipes(
        path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    """The save is held inside its file write while the proxy locks: the lock returns at
    once (the event loop never waits for a writer), the save completes with the whole new
    value, and the writer wipes on its way out."""
    ks, _ = _filled(path, canary)
    new = canary()
    inside, go = threading.Event(), threading.Event()
    real = atomic.replace

    def slow(*a: object, **k: object) -> None:
        inside.set()
        assert go.wait(10)
        real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic, "replace", slow)
    session = Session()
    session.install(ks)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            ks.set_value("api", Secret(new))
            ks.save()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    held = _held(ks)  # (the new value's Secret among them)
    session.lock()  # returns while the writer holds the keystore
    assert ks.wiped and any(s.reveal() for s in held)  # not yet: the writer still writes
    go.set()
    t.join(10)
    assert not errors
    assert [s.reveal() for s in held] == [b""] * len(held)  # the writer wiped
    monkeypatch.setattr(atomic, "replace", real)
    again = Keystore.open(path, Secret("pw"))
    api = again.get("api")
    assert api is not None and api.value is not None and api.value.reveal() == new.encode()


def test_locks_racing_writers_never_leave_a_wiped_value_on_disk(
        path: Path, canary: Canary) -> None:
    """Seeded: writer threads set and save canaries while the main thread locks at random
    moments; every time, the file opens and holds, for each entry, a value some writer
    wrote whole (never an empty or zeroed one), and the keystore object holds nothing."""
    rng = random.Random(1607)
    for _round in range(12):
        if path.exists():
            path.unlink()
            path.with_suffix(".enc.bak").unlink(missing_ok=True)
        ks = Keystore.create(path, Secret("pw"), FAST)
        written: dict[str, set[bytes]] = {f"e{i}": set() for i in range(3)}
        for name, seen in written.items():
            value = canary().encode()
            seen.add(value)
            ks.set_value(name, Secret(value))
        ks.save()
        session = Session()
        session.install(ks)
        stop = threading.Event()

        def write(name: str, seen: set[bytes], ks: Keystore = ks,
                  stop: threading.Event = stop) -> None:
            while not stop.is_set():
                value = canary().encode()
                seen.add(value)
                try:
                    ks.set_value(name, Secret(value))
                    ks.save()
                except KeystoreError:
                    return

        threads = [threading.Thread(target=write, args=(n, s)) for n, s in written.items()]
        for t in threads:
            t.start()
        threading.Event().wait(rng.uniform(0.0, 0.05))
        session.lock()
        stop.set()
        for t in threads:
            t.join(10)
        again = Keystore.open(path, Secret("pw"))
        for name, seen in written.items():
            entry = again.get(name)
            assert entry is not None and entry.value is not None
            assert entry.value.reveal() in seen
        assert ks.names() == [] and not any(ks._dek)


def test_a_workers_view_is_wiped_too(path: Path, canary: Canary) -> None:
    ks, want = _filled(path, canary)
    plain = ks.plaintext()
    view = Keystore.view(path, plain)
    held = _held(view)
    session = Session()
    session.install(view)
    session.lock()
    assert [s.reveal() for s in held] == [b""] * len(held)
    assert sorted(s.reveal().decode() for s in _held(ks)) == sorted(want.values())  # its own
