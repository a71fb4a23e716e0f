"""Threat: secrets readable at rest, or a format only our own code understands.

An independent reader written from docs/operator/KEYSTORE.md alone (cryptography + argon2
low level, no vaultproxy.keystore import) must decrypt a keystore the CLI made; and no
stored value may appear in plaintext in any file under the home."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import tests.canary as canaries
from tests.canary import CANARY_RE
from tests.keystore_cli import init_home, password_file, vp

pytestmark = [pytest.mark.security, pytest.mark.integration]


def independent_read(data: bytes, password: bytes) -> dict[str, object]:
    """Decrypt a v1 keystore exactly as KEYSTORE.md describes it."""
    assert data[:8] == b"VPKSTOR1" and data[8] == 1
    content, trailer = data[:-32], data[-32:]
    assert hashlib.sha256(content).digest() == trailer
    kdf_id, t, m, p = struct.unpack(">BIII", content[9:22])
    assert kdf_id == 1
    salt, count = content[22:38], content[38]
    header_len = 39 + 4 * count
    header = content[:header_len]
    pos, password_slot = header_len, None
    for i in range(count):
        kind, reserved, length = struct.unpack(">BBH", content[39 + 4 * i : 43 + 4 * i])
        assert reserved == 0
        if kind == 1:
            password_slot = content[pos : pos + length]
        pos += length
    assert password_slot is not None and len(password_slot) == 60
    body = content[pos:]
    kek = hash_secret_raw(secret=password, salt=salt, time_cost=t, memory_cost=m,
                          parallelism=p, hash_len=32, type=Type.ID)
    dek = AESGCM(kek).decrypt(password_slot[:12], password_slot[12:], header)
    plain = AESGCM(dek).decrypt(body[:12], body[12:], header)
    doc = json.loads(plain)
    assert isinstance(doc, dict)
    return doc


@dataclass
class Stored:
    home: Path
    password: str = field(repr=False)
    values: dict[str, str] = field(repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.home, self.password, self.values))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    base = tmp_path_factory.mktemp("format")
    home = base / "home"
    canaries.watch(home)
    canary = canaries.make_canary
    password = canary()
    pw = password_file(base, password)
    init_home(home, pw)
    values = {"openai": canary(), "github.username": canary(), "github.token": canary()}
    common = ["--home", str(home), "--password-file", str(pw)]
    assert vp("secret", "set", "openai", *common, stdin=values["openai"].encode() + b"\n"
              ).returncode == 0
    for fname in ("username", "token"):
        r = vp("secret", "set", "github", "--field", fname, *common,
               stdin=values[f"github.{fname}"].encode())
        assert r.returncode == 0, r.stderr
    return Stored(home, password, values)


def test_independent_reader_decrypts_cli_keystore(
        stored: Stored) -> None:
    home, password, values = stored
    doc = independent_read((home / "keystore.enc").read_bytes(), password.encode())
    assert doc["format"] == 1
    entries = doc["entries"]
    assert isinstance(entries, dict)

    def val(raw: str) -> str:
        return base64.b64decode(raw).decode()

    assert val(entries["openai"]["value"]) == values["openai"]  # one newline stripped
    assert entries["github"]["value"] is None
    assert val(entries["github"]["fields"]["username"]) == values["github.username"]
    assert val(entries["github"]["fields"]["token"]) == values["github.token"]
    # The header records the default RFC 9106 low-memory profile.
    t, m, p = struct.unpack(">III", (home / "keystore.enc").read_bytes()[10:22])
    assert (t, m, p) == (3, 65536, 4)


def test_independent_reader_rejects_wrong_password(
        stored: Stored) -> None:
    """Negative twin: the reader is real, so a wrong password must fail in it too."""
    from cryptography.exceptions import InvalidTag

    home, password, _ = stored
    with pytest.raises(InvalidTag):
        independent_read((home / "keystore.enc").read_bytes(), password.encode() + b"x")


def test_no_plaintext_anywhere_in_home(stored: Stored) -> None:
    home, password, values = stored
    files = [p for p in home.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"keystore.enc", "keystore.enc.bak"}
    for p in files:
        data = p.read_bytes()
        assert not CANARY_RE.search(data), f"{p.name} holds a canary in plaintext"
        for v in [*values.values(), password]:
            assert base64.b64encode(v.encode()) not in data, f"{p.name} holds base64 of a value"


def test_negative_twin_grep_finds_a_planted_value(
        stored: Stored, tmp_path: Path) -> None:
    """The grep above would notice a plaintext value (checked outside the home)."""
    _, _, values = stored
    planted = tmp_path / "planted.txt"
    planted.write_bytes(b"x" + values["openai"].encode() + b"y")
    assert CANARY_RE.search(planted.read_bytes())
    planted.unlink()
