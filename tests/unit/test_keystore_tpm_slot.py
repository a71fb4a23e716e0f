"""The TPM slot's framing and the format version rule, without a TPM."""

from __future__ import annotations

import pytest

from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import KdfParams, format, tpm


def _payload(pub: bytes = b"P" * 48, priv: bytes = b"V" * 158, template: int = 1) -> bytes:
    return (bytes([template]) + len(pub).to_bytes(2, "big") + pub
            + len(priv).to_bytes(2, "big") + priv)


def test_split_reads_the_documented_layout() -> None:
    template, pub, priv = tpm.split(_payload())
    assert template == 1
    assert pub == (48).to_bytes(2, "big") + b"P" * 48  # TPM2B: the size stays on
    assert priv == (158).to_bytes(2, "big") + b"V" * 158


@pytest.mark.parametrize("bad", [
    b"", b"\x01", _payload()[:-1], _payload() + b"\x00", _payload(pub=b""),
    b"\x01\xff\xff" + b"x" * 10,
])
def test_split_refuses_malformed_payloads(bad: bytes) -> None:
    with pytest.raises(KeystoreError, match="TPM slot is malformed"):
        tpm.split(bad)


def test_version_is_the_lowest_that_describes_the_slots() -> None:
    kdf = KdfParams(1, 8, 1)
    pw = format.Slot(format.SLOT_PASSWORD, bytes(60))
    tp = format.Slot(format.SLOT_TPM, _payload())
    assert format.header_for(kdf, bytes(16), (pw,)).pack()[8] == 1
    header = format.header_for(kdf, bytes(16), (pw, tp))
    assert header.pack()[8] == 2
    assert header.slot_types == (1, 2) and header.slot_lengths == (60, len(_payload()))


def test_parse_keeps_the_version_so_a_rewrite_keeps_the_aad() -> None:
    kdf = KdfParams(1, 8, 1)
    pw = format.Slot(format.SLOT_PASSWORD, bytes(60))
    tp = format.Slot(format.SLOT_TPM, _payload())
    header = format.header_for(kdf, bytes(16), (pw, tp))
    data = format.assemble(header, [pw, tp], bytes(40))
    parsed = format.parse(data)
    assert parsed.header.pack() == parsed.header_bytes
    assert parsed.slots == (pw, tp)


def test_unseal_without_tpm_support_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_tss(name: str, *a: object, **k: object) -> object:
        if name.startswith("tpm2_pytss"):
            raise ImportError(name)
        return real(name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tss)
    with pytest.raises(tpm.TpmUnavailable, match=r"pip install 'vaultproxy\[tpm\]'"):
        tpm.unseal(_payload(), "swtpm:port=1")
