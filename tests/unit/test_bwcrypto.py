"""Bitwarden key derivation and cipher strings (vaultproxy/sync/bwcrypto.py) in isolation.

The end-to-end oracle is the official CLI (tests/integration/test_bitwarden_source.py);
here: the bounds a hostile server's KDF settings meet, the MAC checked before any decryption
(with the decryptor watched), the refused cipher string types and RSA-OAEP. (TOTP codes:
tests/unit/test_sync.py.)
"""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP

from tests.harness.bitwarden_server import enc_type2
from vaultproxy.sync import bwcrypto
from vaultproxy.sync.bwcrypto import (
    KDF_ARGON2ID,
    KDF_PBKDF2,
    CryptoError,
    Kdf,
    SymmetricKey,
    decrypt_rsa,
    decrypt_sym,
)


def _flip(cipher_string: str, part: int) -> str:
    kind, rest = cipher_string.split(".", 1)
    parts = rest.split("|")
    raw = bytearray(base64.b64decode(parts[part]))
    raw[-1] ^= 0x01
    parts[part] = base64.b64encode(bytes(raw)).decode()
    return f"{kind}.{'|'.join(parts)}"


@pytest.mark.parametrize("kdf", [
    Kdf(KDF_PBKDF2, 4_999), Kdf(KDF_PBKDF2, 2_000_001),
    Kdf(KDF_ARGON2ID, 1, 64, 4), Kdf(KDF_ARGON2ID, 3, 4096, 4), Kdf(KDF_ARGON2ID, 3, 64, 0),
    Kdf(KDF_ARGON2ID, 3, None, 4), Kdf(7, 600_000),
])  # fmt: skip
def test_a_hostile_servers_kdf_settings_are_refused_before_any_work(kdf: Kdf) -> None:
    with pytest.raises(CryptoError):
        bwcrypto.master_key(b"pw", "a@b.test", kdf)


def test_bitwardens_own_defaults_pass_the_bounds() -> None:
    Kdf(KDF_PBKDF2, 600_000).check()
    Kdf(KDF_ARGON2ID, 3, 64, 4).check()


def test_the_email_salt_is_trimmed_and_lower_cased() -> None:
    kdf = Kdf(KDF_PBKDF2, 5_000)
    assert bwcrypto.master_key(b"pw", " Ops@Example.TEST ", kdf) == bwcrypto.master_key(
        b"pw", "ops@example.test", kdf
    )


def test_type2_round_trip_and_every_flipped_bit_fails_the_mac() -> None:
    raw = os.urandom(64)
    key = SymmetricKey.from_bytes(raw)
    cs = enc_type2(b"hello", raw)
    assert decrypt_sym(cs, key) == b"hello"
    for part in (0, 1, 2):  # iv, data, mac: all covered by the MAC
        with pytest.raises(CryptoError, match="MAC check failed"):
            decrypt_sym(_flip(cs, part), key)
    with pytest.raises(CryptoError, match="MAC check failed"):  # the wrong key
        decrypt_sym(cs, SymmetricKey.from_bytes(os.urandom(64)))


def test_nothing_is_decrypted_before_the_mac_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(64)
    key = SymmetricKey.from_bytes(raw)
    cs = enc_type2(b"x" * 40, raw)
    calls: list[object] = []
    real = bwcrypto.Cipher

    def watched(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bwcrypto, "Cipher", watched)
    with pytest.raises(CryptoError):
        decrypt_sym(_flip(cs, 1), key)
    assert calls == []  # the tampered string never reached AES-CBC (no padding oracle)
    assert decrypt_sym(cs, key) == b"x" * 40
    assert len(calls) == 1  # its twin: a valid string does


@pytest.mark.parametrize("bad", [
    "0.aXY=|ZGF0YQ==",  # AES-CBC without a MAC: unauthenticated, refused
    "1.aXY=|ZGF0YQ==|bWFj", "2.only|two", "2.!!|!!|!!", "nodot", "",
    "2." + "|".join(base64.b64encode(b).decode() for b in (b"i" * 15, b"d" * 16, b"m" * 32)),
])  # fmt: skip
def test_malformed_or_unauthenticated_cipher_strings_are_refused(bad: str) -> None:
    with pytest.raises(CryptoError):
        decrypt_sym(bad, SymmetricKey.from_bytes(os.urandom(64)))


def test_rsa_oaep_types_3_and_4_and_the_wrong_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = os.urandom(64)
    for kind, algo in (("4", hashes.SHA1()), ("3", hashes.SHA256())):
        wrapped = private.public_key().encrypt(secret, OAEP(MGF1(algo), algo, None))
        cs = f"{kind}.{base64.b64encode(wrapped).decode()}"
        assert decrypt_rsa(cs, private) == secret
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CryptoError, match="RSA-OAEP decryption failed"):
        decrypt_rsa(cs, other)
    with pytest.raises(CryptoError):
        decrypt_rsa("2.a|b|c", private)


def test_keys_do_not_show_in_repr() -> None:
    raw = os.urandom(64)
    assert raw.hex() not in repr(SymmetricKey.from_bytes(raw))
    assert repr(SymmetricKey.from_bytes(raw)) == "SymmetricKey(***)"
