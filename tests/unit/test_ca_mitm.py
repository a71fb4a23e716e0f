"""mitmproxy uses OUR CA: its CertStore loads it, and the leaves it issues verify against ca.crt."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from mitmproxy.certs import CertStore, CertStoreEntry

from tests.unit.test_ca import make_home
from vaultproxy import ca as ca_mod
from vaultproxy.files.home import Home

HOST = "example.test"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


def store_for(home: Home) -> CertStore:
    confdir = ca_mod.materialize_mitm_confdir(home)
    return CertStore.from_store(confdir, "mitmproxy", 2048)


def leaf_for(home: Home, host: str = HOST) -> CertStoreEntry:
    return store_for(home).get_cert(host, [x509.DNSName(host)])


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def handshake(entry: CertStoreEntry, tmp_path: Path, cafile: Path, hostname: str) -> None:
    """A real TLS handshake over memory BIOs: server = mitmproxy's leaf, client trusts cafile."""
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_file.write_bytes(entry.cert.to_pem())
    key_file.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT

    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


# --- the confdir ----------------------------------------------------------------------------


def test_confdir_layout_and_modes(home: Home) -> None:
    confdir = ca_mod.materialize_mitm_confdir(home)
    assert confdir == home.mitm_confdir
    assert mode(confdir) == 0o700
    assert mode(confdir / "mitmproxy-ca.pem") == 0o600
    assert mode(confdir / "mitmproxy-ca-cert.pem") == 0o644
    assert (confdir / "mitmproxy-ca-cert.pem").read_bytes() == home.ca_cert.read_bytes()


def test_certstore_loads_our_ca(home: Home) -> None:
    ours = ca_mod.load_ca(home)
    store = store_for(home)
    assert ca_mod.fingerprint(store.default_ca._cert) == ours.fingerprint_sha256
    assert store.default_ca.fingerprint() == ours.cert.fingerprint(hashes.SHA256())
    # mitmproxy did not generate a CA of its own next to ours.
    assert not (home.mitm_confdir / "mitmproxy-ca.p12").exists()


def test_rewrites_only_when_changed(home: Home) -> None:
    confdir = ca_mod.materialize_mitm_confdir(home)
    pem = confdir / "mitmproxy-ca.pem"
    inode = os.stat(pem).st_ino
    ca_mod.materialize_mitm_confdir(home)
    assert os.stat(pem).st_ino == inode

    pem.write_bytes(b"tampered")
    os.chmod(pem, 0o644)
    ca_mod.materialize_mitm_confdir(home)
    assert b"tampered" not in pem.read_bytes()
    assert mode(pem) == 0o600
    assert (
        ca_mod.fingerprint(store_for(home).default_ca._cert)
        == ca_mod.load_ca(home).fingerprint_sha256
    )


def test_confdir_is_tightened_and_stale_mitmproxy_ca_removed(home: Home) -> None:
    home.mitm_confdir.mkdir(mode=0o755)
    os.chmod(home.mitm_confdir, 0o755)
    # A store mitmproxy generated earlier holds a different CA (and its key).
    CertStore.create_store(home.mitm_confdir, "mitmproxy", 2048)
    ca_mod.materialize_mitm_confdir(home)
    assert mode(home.mitm_confdir) == 0o700
    for stale in ("mitmproxy-ca.p12", "mitmproxy-ca-cert.p12", "mitmproxy-ca-cert.cer"):
        assert not (home.mitm_confdir / stale).exists()
    assert (
        ca_mod.fingerprint(store_for(home).default_ca._cert)
        == ca_mod.load_ca(home).fingerprint_sha256
    )


# --- leaves verify against ca.crt, and only against it ---------------------------------------


@pytest.mark.security
def test_leaf_verifies_against_our_ca_with_ssl(home: Home, tmp_path: Path) -> None:
    handshake(leaf_for(home), tmp_path, home.ca_cert, HOST)


@pytest.mark.security
def test_leaf_fails_against_a_different_ca_with_ssl(home: Home, tmp_path: Path) -> None:
    other = make_home(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(leaf_for(home), tmp_path, other.ca_cert, HOST)


@pytest.mark.security
def test_leaf_fails_for_another_hostname_with_ssl(home: Home, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname mismatch"):
        handshake(leaf_for(home), tmp_path, home.ca_cert, "other.test")


@pytest.mark.security
def test_leaf_verifies_through_the_bundle(home: Home, tmp_path: Path) -> None:
    # What agents actually get: SSL_CERT_FILE = the bundle.
    handshake(leaf_for(home), tmp_path, ca_mod.build_bundle(home), HOST)


def _verify(leaf: x509.Certificate, roots: list[x509.Certificate], host: str) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(datetime.datetime.now(datetime.UTC))
        .build_server_verifier(x509.DNSName(host))
    )
    verifier.verify(leaf, [])


@pytest.mark.security
def test_leaf_verifies_with_cryptography_and_fails_for_other_ca(home: Home, tmp_path: Path) -> None:
    leaf = leaf_for(home).cert._cert
    _verify(leaf, [ca_mod.load_ca(home).cert], HOST)
    other = ca_mod.load_ca(make_home(tmp_path / "other")).cert
    with pytest.raises(VerificationError):
        _verify(leaf, [other], HOST)
    with pytest.raises(VerificationError):
        _verify(leaf, [ca_mod.load_ca(home).cert], "other.test")
