"""Threat: a keystore sealed to one machine's TPM opening elsewhere, or a modified TPM slot.

A real software TPM (swtpm) per test on loopback ports. Sealed: `vaultproxy run` unlocks with
no password source; another TPM (fresh state): starts locked, the password still recovers;
any changed byte of the slot: refused by the TPM path, the password still opens; `tpm unseal`
removes the slot from the file and its backup. Each has its negative twin."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.canary as canaries
from tests.harness import swtpm
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import free_port
from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import KdfParams, Keystore, format, store
from vaultproxy.secret import Secret

pytestmark = [pytest.mark.security, pytest.mark.integration]
FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


@pytest.fixture(autouse=True)
def _stack() -> None:
    swtpm.require_tpm_stack()


@pytest.fixture
def tpm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[swtpm.Swtpm]:
    with swtpm.running(tmp_path / "tpm-a") as t:
        monkeypatch.setenv("VAULTPROXY_TCTI", t.tcti)
        yield t


@pytest.fixture
def other_tpm(tmp_path: Path) -> Iterator[swtpm.Swtpm]:
    with swtpm.running(tmp_path / "tpm-b") as t:
        yield t


@pytest.fixture
def sealed(tmp_path: Path, tpm: swtpm.Swtpm, monkeypatch: pytest.MonkeyPatch
           ) -> tuple[Path, Secret, str]:
    """A keystore (fast KDF) with one canary secret, sealed to ``tpm``."""
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)
    home = tmp_path / "ks"
    home.mkdir(mode=0o700)
    canaries.watch(home)
    password, value = Secret(canaries.make_canary()), canaries.make_canary()
    ks = Keystore.create(home / "keystore.enc", password, FAST)
    ks.set_value("openai", Secret(value))
    ks.save()
    ks.add_tpm_slot(password)
    return home / "keystore.enc", password, value


def _tpm_payload_span(data: bytes) -> tuple[int, int]:
    parsed = format.parse(data)
    pos = len(parsed.header_bytes)
    for slot in parsed.slots:
        if slot.type == format.SLOT_TPM:
            return pos, pos + len(slot.payload)
        pos += len(slot.payload)
    raise AssertionError("no TPM slot")


def _fix_checksum(data: bytes) -> bytes:
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def _value(ks: Keystore) -> bytes:
    entry = ks.get("openai")
    assert entry is not None and entry.value is not None
    return entry.value.reveal()


# -- the keystore API against a real TPM ----------------------------------------------------

def test_sealed_keystore_opens_with_the_tpm_and_the_password(sealed: tuple[Path, Secret, str]
                                                             ) -> None:
    path, password, value = sealed
    data = path.read_bytes()
    assert data[8] == 2  # format v2: the file holds a TPM slot
    assert _value(Keystore.open_tpm(path)) == value.encode()
    assert _value(Keystore.open(path, password)) == value.encode()  # recovery stays


def test_negative_twin_unsealed_keystore_is_v1_and_has_no_tpm_path(
        tmp_path: Path, tpm: swtpm.Swtpm) -> None:
    home = tmp_path / "plain"
    home.mkdir(mode=0o700)
    Keystore.create(home / "keystore.enc", Secret(canaries.make_canary()), FAST)
    assert (home / "keystore.enc").read_bytes()[8] == 1
    with pytest.raises(KeystoreError, match="has no TPM slot"):
        Keystore.open_tpm(home / "keystore.enc")


def test_another_tpm_refuses_and_the_password_recovers(
        sealed: tuple[Path, Secret, str], other_tpm: swtpm.Swtpm) -> None:
    path, password, value = sealed
    with pytest.raises(KeystoreError, match="refuses this keystore's TPM slot") as info:
        Keystore.open_tpm(path, other_tpm.tcti)
    assert value not in str(info.value)
    assert _value(Keystore.open(path, password)) == value.encode()


def test_every_flipped_byte_of_the_tpm_slot_is_refused(sealed: tuple[Path, Secret, str]) -> None:
    """Exhaustive: each byte of the slot payload flipped (checksum recomputed, so only the TPM
    and AES-GCM stand in the way) is refused; the password slot still opens the file."""
    path, password, value = sealed
    original = path.read_bytes()
    start, end = _tpm_payload_span(original)
    assert end - start > 100
    for index in range(start, end):
        flipped = bytearray(original)
        flipped[index] ^= 0x01
        path.write_bytes(_fix_checksum(bytes(flipped)))
        with pytest.raises(KeystoreError) as info:
            Keystore.open_tpm(path)
        assert value not in str(info.value)
    assert _value(Keystore.open(path, password)) == value.encode()  # the last flip, by password
    path.write_bytes(original)
    assert _value(Keystore.open_tpm(path)) == value.encode()  # twin: the original opens


def test_header_flips_are_refused_on_the_tpm_path(sealed: tuple[Path, Secret, str]) -> None:
    """The header (slot table included) is the AES-GCM AAD: the TPM path checks it too."""
    path, _, _ = sealed
    original = path.read_bytes()
    header_len = len(format.parse(original).header_bytes)
    for index in range(9, header_len):  # past the magic and version (refused by parse)
        flipped = bytearray(original)
        flipped[index] ^= 0x01
        path.write_bytes(_fix_checksum(bytes(flipped)))
        with pytest.raises(KeystoreError):
            Keystore.open_tpm(path)
    path.write_bytes(original)


def test_a_slot_from_another_keystore_sealed_by_the_same_tpm_is_refused(
        tmp_path: Path, sealed: tuple[Path, Secret, str]) -> None:
    path, password, value = sealed
    home2 = tmp_path / "ks2"
    home2.mkdir(mode=0o700)
    pw2 = Secret(canaries.make_canary())
    Keystore.create(home2 / "keystore.enc", pw2, FAST).add_tpm_slot(pw2)
    other = (home2 / "keystore.enc").read_bytes()
    mine = path.read_bytes()
    a, b = _tpm_payload_span(mine)
    c, d = _tpm_payload_span(other)
    assert b - a == d - c
    path.write_bytes(_fix_checksum(mine[:a] + other[c:d] + mine[b:]))
    with pytest.raises(KeystoreError, match="does not open with the key from its TPM slot"):
        Keystore.open_tpm(path)  # the TPM unseals it, but it is another data key
    assert _value(Keystore.open(path, password)) == value.encode()


def test_passwd_keeps_the_tpm_slot(sealed: tuple[Path, Secret, str]) -> None:
    path, password, value = sealed
    new = Secret(canaries.make_canary())
    Keystore.open(path, password).change_password(new)
    assert _value(Keystore.open_tpm(path)) == value.encode()
    with pytest.raises(KeystoreError, match="wrong master password"):
        Keystore.open(path, password)
    assert _value(Keystore.open(path, new)) == value.encode()


def test_wrong_password_does_not_seal_or_unseal(sealed: tuple[Path, Secret, str]) -> None:
    path, password, _ = sealed
    before = path.read_bytes()
    ks = Keystore.open(path, password)
    with pytest.raises(KeystoreError, match="wrong master password"):
        ks.remove_tpm_slot(Secret(canaries.make_canary()))
    with pytest.raises(KeystoreError, match="wrong master password"):
        ks.add_tpm_slot(Secret(canaries.make_canary()))
    assert path.read_bytes() == before


def test_remove_tpm_slot_drops_it_from_the_file_and_the_backup(
        sealed: tuple[Path, Secret, str]) -> None:
    path, password, value = sealed
    assert Keystore.has_tpm_slot(path.with_name("keystore.enc.bak")) is False  # pre-seal copy
    ks = Keystore.open(path, password)
    assert ks.remove_tpm_slot(password) is True
    for p in (path, path.with_name("keystore.enc.bak")):
        assert Keystore.has_tpm_slot(p) is False
        assert p.read_bytes()[8] == 1
    with pytest.raises(KeystoreError, match="has no TPM slot"):
        Keystore.open_tpm(path)
    assert _value(Keystore.open(path, password)) == value.encode()
    assert ks.remove_tpm_slot(password) is False  # twin: nothing left to remove


def test_saves_through_the_tpm_path_keep_both_slots(sealed: tuple[Path, Secret, str]) -> None:
    path, password, _ = sealed
    ks = Keystore.open_tpm(path)
    fresh = canaries.make_canary()
    ks.set_value("added", Secret(fresh))
    ks.save()
    assert Keystore.open(path, password).names() == ["added", "openai"]
    assert Keystore.open_tpm(path).names() == ["added", "openai"]


# -- the CLI and `vaultproxy run` ------------------------------------------------------------

def _home(tmp_path: Path) -> ProxyHome:
    h = ProxyHome.create(tmp_path, "", {"openai": canaries.make_canary()})
    canaries.watch(h.path)
    return h


def _locked(proxy: ProxyProcess) -> bool:
    r = httpx.get(f"{proxy.extra['admin_url']}/v1/health", trust_env=False, timeout=10)
    return bool(r.json()["locked"])


def _run(home: ProxyHome, *, password: bool) -> tuple[bool, str]:
    proxy = ProxyProcess.start(home, locked=not password)
    try:
        return _locked(proxy), proxy.output()
    finally:
        proxy.stop()


def test_run_unlocks_from_the_tpm_without_a_password(tmp_path: Path, tpm: swtpm.Swtpm) -> None:
    home = _home(tmp_path)
    locked, _ = _run(home, password=False)
    assert locked  # twin: no TPM slot and no password source -> locked
    r = cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    assert "sealed the data key" in r.stdout
    assert cli(home.path, "tpm", "status").returncode == 0
    locked, out = _run(home, password=False)
    assert not locked, out
    assert "unlocked with its TPM slot" in out


def test_run_on_another_tpm_starts_locked_and_the_password_recovers(
        tmp_path: Path, tpm: swtpm.Swtpm, other_tpm: swtpm.Swtpm,
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    monkeypatch.setenv("VAULTPROXY_TCTI", other_tpm.tcti)  # "another machine"
    status = cli(home.path, "tpm", "status", check=False)
    assert status.returncode == 1 and "refuses this keystore's TPM slot" in status.stderr
    locked, out = _run(home, password=False)
    assert locked
    assert "TPM unlock failed" in out and "unlock with the master password" in out
    locked, out = _run(home, password=True)
    assert not locked, out


def test_run_with_the_tpm_unreachable_falls_back(tmp_path: Path, tpm: swtpm.Swtpm,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    tpm.stop()
    locked, out = _run(home, password=False)
    assert locked and "no TPM reachable at swtpm:host=127.0.0.1" in out
    locked, _ = _run(home, password=True)
    assert not locked


def test_tpm_unseal_then_run_needs_the_password(tmp_path: Path, tpm: swtpm.Swtpm) -> None:
    home = _home(tmp_path)
    cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    r = cli(home.path, "tpm", "unseal", "--password-file", str(home.password_file))
    assert "removed the TPM slot" in r.stdout
    status = cli(home.path, "tpm", "status", check=False)
    assert status.returncode == 1 and "no TPM slot" in status.stdout
    locked, _ = _run(home, password=False)
    assert locked


def test_seal_without_a_tpm_names_the_problem_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    before = (home.path / "keystore.enc").read_bytes()
    monkeypatch.setenv("VAULTPROXY_TCTI", "swtpm:host=127.0.0.1,port=1")
    r = cli(home.path, "tpm", "seal", "--password-file", str(home.password_file), check=False)
    assert r.returncode == 1
    assert "no TPM reachable at swtpm:host=127.0.0.1,port=1 (from VAULTPROXY_TCTI)" in r.stderr
    assert "Traceback" not in r.stderr
    assert (home.path / "keystore.enc").read_bytes() == before


def test_init_tpm_seals_a_new_keystore(tmp_path: Path, tpm: swtpm.Swtpm) -> None:
    pw = tmp_path / "pw"
    pw.write_text(canaries.make_canary())
    pw.chmod(0o600)
    home = tmp_path / "h"
    r = cli(home, "init", "--tpm", "--password-file", str(pw))
    assert "sealed its data key to the TPM" in r.stdout
    assert Keystore.has_tpm_slot(home / "keystore.enc")
    assert cli(home, "tpm", "status").returncode == 0


# -- the stock-mitmdump path unlocks from the TPM slot as `vaultproxy run` does --------------

def _mitmdump_locked(home: ProxyHome, log: Path) -> bool:
    """Start `mitmdump -s addons/vaultproxy.py` with no password source; is it locked?"""
    run_json = home.path / "run.json"
    run_json.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mitmdump")), "-s",
             str(REPO / "addons" / "vaultproxy.py"), "--mode",
             f"regular@127.0.0.1:{free_port()}", "--set", f"vaultproxy_home={home.path}",
             "--set", "vaultproxy_admin_listen=127.0.0.1:0",
             "--set", "vaultproxy_dashboard_listen="],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while not run_json.exists():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            admin = json.loads(run_json.read_text())["admin_url"]
            r = httpx.get(f"{admin}/v1/health", trust_env=False, timeout=10)
            return bool(r.json()["locked"])
        finally:
            proc.terminate()
            proc.wait(15)


def test_mitmdump_unlocks_from_the_tpm_without_a_password(tmp_path: Path,
                                                          tpm: swtpm.Swtpm) -> None:
    home = _home(tmp_path)
    assert _mitmdump_locked(home, tmp_path / "md1.log")  # twin: no TPM slot -> locked
    cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    assert not _mitmdump_locked(home, tmp_path / "md2.log")


def test_mitmdump_on_another_tpm_starts_locked(tmp_path: Path, tpm: swtpm.Swtpm,
                                               other_tpm: swtpm.Swtpm,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    cli(home.path, "tpm", "seal", "--password-file", str(home.password_file))
    monkeypatch.setenv("VAULTPROXY_TCTI", other_tpm.tcti)  # "another machine"
    assert _mitmdump_locked(home, tmp_path / "md.log")
