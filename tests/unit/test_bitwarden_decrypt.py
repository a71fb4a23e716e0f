"""The Bitwarden client's decryption of a sync answer, without a server: the casing older
Bitwarden servers use (PascalCase), malformed shapes a hostile server might send, items of
an organisation the account is not in, and the master password's twin. (Values the official
CLI wrote: tests/integration/test_bitwarden_source.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.canary import make_canary
from tests.harness.bitwarden_server import enc_type2, make_account
from vaultproxy.net.egress import AddressContext
from vaultproxy.sync import bwcrypto
from vaultproxy.sync.base import SourceError
from vaultproxy.sync.bitwarden import BitwardenSource
from vaultproxy.sync.bwcrypto import KDF_PBKDF2, Kdf

KDF = {"kdf": 0, "iterations": 5_000, "memory": None, "parallelism": None}
EMAIL = "ops@example.test"


def _source(folder: str | None = "vp") -> BitwardenSource:
    return BitwardenSource("vw", "https://vw.test", folder, Path("/dev/null"), AddressContext())


def _vault(password: str, secret: str) -> tuple[dict[str, Any], bytes]:
    account = make_account(EMAIL, password, KDF)
    uk = account.user_key
    folder_id = "f-1"
    vault = {  # PascalCase, as older Bitwarden servers answer
        "Profile": {"Key": account.key, "PrivateKey": account.private_key,
                    "Email": EMAIL, "Organizations": []},
        "Folders": [{"Id": folder_id, "Name": enc_type2(b"vp", uk)}],
        "Ciphers": [
            {"Id": "c-1", "Type": 1, "FolderId": folder_id, "Name": enc_type2(b"api", uk),
             "Login": {"Username": enc_type2(b"me", uk),
                       "Password": enc_type2(secret.encode(), uk)},
             "Fields": [{"Name": enc_type2(b"token", uk), "Value": enc_type2(b"t-1", uk),
                         "Type": 1}],
             "RevisionDate": "2026-11-30T00:00:00Z"},
            {"Id": "c-2", "Type": 1, "FolderId": folder_id, "OrganizationId": "org-gone",
             "Name": "2.AAAA|BBBB|CCCC"},  # an org this account is not in: skipped
            {"Id": "c-3", "Type": 1, "FolderId": folder_id, "Name": enc_type2(b"api", uk),
             "DeletedDate": "2026-11-29T00:00:00Z"},  # in the trash: not a duplicate
        ],
    }  # fmt: skip
    master = bwcrypto.master_key(password.encode(), EMAIL, Kdf(KDF_PBKDF2, 5_000))
    return vault, master


def test_pascal_case_answers_decrypt_and_foreign_and_trashed_items_are_skipped() -> None:
    password, secret = make_canary(), make_canary()
    vault, master = _vault(password, secret)
    items = _source()._decrypt(vault, master, ["api"])
    got = {k: v.reveal_str() for k, v in items["api"].fields.items()}
    assert got == {"username": "me", "password": secret, "token": "t-1"}
    assert items["api"].revision == "2026-11-30T00:00:00Z"


def test_the_wrong_master_key_fails_on_the_account_key() -> None:
    vault, _ = _vault(make_canary(), make_canary())
    wrong = hashlib.sha256(b"not it").digest()
    with pytest.raises(SourceError, match="does not decrypt the account key"):
        _source()._decrypt(vault, wrong, ["api"])


@pytest.mark.parametrize("mangle", [
    lambda v: v.update(Ciphers=5), lambda v: v.update(Folders="x"),
    lambda v: v["Ciphers"][0].update(Fields={"a": 1}), lambda v: v.update(Profile=[]),
    lambda v: v["Profile"].update(Organizations=None),
])  # fmt: skip
def test_malformed_shapes_never_crash(mangle: Any) -> None:
    vault, master = _vault(make_canary(), make_canary())
    mangle(vault)
    try:
        _source()._decrypt(vault, master, ["api"])
    except SourceError:
        pass  # a clean refusal is fine; a TypeError/KeyError would not be
