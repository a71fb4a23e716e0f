"""Threat: a modified, truncated or foreign keystore file. Every change is detected, the
file is left untouched, and the error is one line that quotes no value."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.canary as canaries
from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import KdfParams, Keystore, store
from vaultproxy.secret import Secret

pytestmark = pytest.mark.security
FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


@dataclass
class Made:
    home: Path
    original: bytes
    password: Secret
    values: list[str] = field(repr=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    home = tmp_path_factory.mktemp("tamper")
    home.chmod(0o700)
    canaries.watch(home)
    password = Secret(canaries.make_canary())
    values = [canaries.make_canary() for _ in range(3)]
    mp = pytest.MonkeyPatch()
    mp.setattr(store, "KDF_FLOOR", FAST)
    try:
        ks = Keystore.create(home / "keystore.enc", password, FAST)
        ks.set_value("openai", Secret(values[0]))
        ks.set_field("github", "username", Secret(values[1]))
        ks.set_internal("agent:bot", Secret(values[2]))
        ks.save()
    finally:
        mp.undo()
    original = (home / "keystore.enc").read_bytes()
    (home / "keystore.enc.bak").unlink()
    return Made(home, original, password, values)


def _refused(made: Made, data: bytes) -> str:
    """Write ``data`` as the keystore, try to open it; it must fail and stay byte-identical."""
    path = made.home / "keystore.enc"
    path.write_bytes(data)
    path.chmod(0o600)
    listing = sorted(p.name for p in made.home.iterdir())
    with pytest.raises(KeystoreError) as info:
        Keystore.open(path, made.password)
    assert path.read_bytes() == data
    assert sorted(p.name for p in made.home.iterdir()) == listing
    message = str(info.value)
    assert "\n" not in message
    for v in made.values:
        assert v not in message
    return message


def _fix_checksum(data: bytes) -> bytes:
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def test_untampered_file_opens(made: Made) -> None:
    path = made.home / "keystore.enc"
    path.write_bytes(made.original)
    assert Keystore.open(path, made.password).names() == ["github", "openai"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_flip_is_detected(made: Made, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(made.original) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="xor")
    recompute = data.draw(st.booleans(), label="recompute checksum")
    flipped = bytearray(made.original)
    flipped[index] ^= mask
    tampered = bytes(flipped)
    if recompute and index < len(tampered) - 32:
        tampered = _fix_checksum(tampered)  # forces the AES-GCM checks to catch it
    _refused(made, tampered)


def test_every_byte_flip_is_detected_even_with_a_valid_checksum(made: Made) -> None:
    """Exhaustive twin of the property test: the checksum is not what protects us."""
    for index in range(len(made.original) - 32):
        flipped = bytearray(made.original)
        flipped[index] ^= 0x01
        _refused(made, _fix_checksum(bytes(flipped)))


def test_body_tamper_with_valid_checksum_names_authentication(made: Made) -> None:
    flipped = bytearray(made.original)
    flipped[-40] ^= 0x80  # inside the body's GCM tag
    assert "fails authentication" in _refused(made, _fix_checksum(bytes(flipped)))


@pytest.mark.parametrize("keep", [0, 1, 7, 8, 9, 30, 43, 100, -33, -1])
def test_truncation_is_detected(made: Made, keep: int) -> None:
    message = _refused(made, made.original[:keep])
    assert "damaged" in message


def test_appended_bytes_are_detected(made: Made) -> None:
    _refused(made, made.original + b"\x00")


def test_foreign_file_is_named(made: Made) -> None:
    assert "not a vaultproxy keystore" in _refused(made, b'{"not": "a keystore"}\n' * 4)


def test_unknown_version_is_named(made: Made) -> None:
    newer = bytearray(made.original)
    newer[8] = 3
    message = _refused(made, bytes(newer))
    assert "version 3" in message and "upgrade vaultproxy" in message


def test_weakened_kdf_in_header_is_detected(made: Made) -> None:
    """Lowering time_cost in the header (checksum fixed) must not open with weaker params."""
    weak = bytearray(made.original)
    weak[10:14] = (0).to_bytes(4, "big")
    _refused(made, _fix_checksum(bytes(weak)))
    weak[10:14] = (2).to_bytes(4, "big")
    assert "wrong master password" in _refused(made, _fix_checksum(bytes(weak)))


def test_negative_twin_restored_file_opens(made: Made) -> None:
    """The harness itself: writing back the original bytes opens fine."""
    path = made.home / "keystore.enc"
    path.write_bytes(made.original)
    path.chmod(0o600)
    assert Keystore.open(path, made.password).names() == ["github", "openai"]
