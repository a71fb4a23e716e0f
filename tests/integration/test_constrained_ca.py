"""A name-constrained MITM CA (`vaultproxy ca init --constrain` / `ca reissue`): OpenSSL
(`openssl verify`), curl, Python `ssl` and Chromium accept a leaf for a registered host and
reject one for an unregistered host signed with the same CA key -- the test signs that leaf
itself, as a thief holding ca.key would. Each rejection has a twin: the same key's
certificate without constraints accepts the thief's leaf, so the constraint is what refuses
it. Also: the running proxy's own leaves carry only permitted names; check/reload warn about
a host outside; reissue takes it in; ca/trust.sh replaces the earlier certificate."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from vaultproxy.ca import constraints

GOOD, EVIL, WILD = "svc.api.test", "evil.example", "x.wild.test"


def _leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
          out: Path) -> Path:
    """A server certificate for ``name`` signed with the CA key (what a thief can do)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return out


class TlsServer:
    """HTTPS on loopback answering 200 "ok"; the leaf is chosen by SNI."""

    def __init__(self, leaves: dict[str, Path]) -> None:
        self.contexts = {}
        for name, pem in leaves.items():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pem))
            self.contexts[name] = ctx
        self.default = next(iter(self.contexts.values()))
        self.default.sni_callback = self._pick
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _pick(self, conn: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name in self.contexts:
            conn.context = self.contexts[name]  # type: ignore[union-attr]

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.default.wrap_socket(raw, server_side=True) as s:
                s.settimeout(5)
                s.recv(65536)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2"
                          b"\r\nConnection: close\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@dataclass
class Env:
    proxy: ProxyProcess
    constrained: Path  # ca.crt after `ca init --constrain`
    unconstrained: Path  # the same key's certificate without constraints (the twin)
    leaves: dict[str, Path]
    server: TlsServer
    base: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("constrained-ca")
    toml = service_block("svc", "host_inject", "bearer", upstream.port) + (
        '[[service]]\nname = "wild"\nhosts = ["*.wild.test"]\nmode = "host_inject"\n'
        'auth = "bearer"\n'
    )
    canary.watch(base)
    home = ProxyHome.create(base, toml, {"svc": make_canary(), "wild": make_canary()},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    plain_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    out = cli(home.path, "ca", "init", "--constrain")
    assert "permits: svc.api.test, wild.test, vaultproxy.internal" in out.stdout, out.stdout
    ca_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    key = serialization.load_pem_private_key((home.path / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert ca_cert.public_key() == plain_cert.public_key()  # same key, re-issued
    ext = ca_cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    constrained = base / "constrained.crt"
    constrained.write_bytes(home.ca_cert.read_bytes())
    unconstrained = base / "unconstrained.crt"
    unconstrained.write_bytes(constraints.reissued(ca_cert, key, None).public_bytes(
        serialization.Encoding.PEM))
    leaves = {n: _leaf(ca_cert, key, n, base / f"{n}.pem") for n in (GOOD, EVIL, WILD)}
    server = TlsServer(leaves)
    proxy = ProxyProcess.start(home)
    yield Env(proxy, constrained, unconstrained, leaves, server, base)
    proxy.stop()
    server.close()


# -- OpenSSL ---------------------------------------------------------------------------------

def _openssl_verify(ca: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", "sslserver",
                           str(leaf)], capture_output=True, text=True, timeout=30)


def test_openssl_verify(env: Env) -> None:
    for name in (GOOD, WILD):
        ok = _openssl_verify(env.constrained, env.leaves[name])
        assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    bad = _openssl_verify(env.constrained, env.leaves[EVIL])
    assert bad.returncode != 0
    assert "permitted subtree violation" in bad.stdout + bad.stderr
    twin = _openssl_verify(env.unconstrained, env.leaves[EVIL])
    assert twin.returncode == 0, twin.stdout + twin.stderr


# -- curl ------------------------------------------------------------------------------------

def _curl(env: Env, ca: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--cacert", str(ca), "--resolve",
         f"{name}:{env.server.port}:127.0.0.1", f"https://{name}:{env.server.port}/"],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]},
    )


def test_curl(env: Env) -> None:
    assert _curl(env, env.constrained, GOOD).stdout == "ok"
    assert _curl(env, env.constrained, WILD).stdout == "ok"
    bad = _curl(env, env.constrained, EVIL)
    assert bad.returncode == 60 and bad.stdout == "", bad.stderr  # peer certificate refused
    assert _curl(env, env.unconstrained, EVIL).stdout == "ok"


# -- Python ssl ------------------------------------------------------------------------------

def _python(env: Env, ca: Path, name: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return s.recv(4096)


def test_python_ssl(env: Env) -> None:
    assert _python(env, env.constrained, GOOD).endswith(b"ok")
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        _python(env, env.constrained, EVIL)
    assert _python(env, env.unconstrained, EVIL).endswith(b"ok")


# -- Chromium --------------------------------------------------------------------------------

def _nssdb_home(env: Env, ca: Path, label: str) -> Path:
    """A HOME whose NSS database trusts ``ca`` for TLS servers (Chromium's local roots)."""
    home = env.base / f"chromium-{label}"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True,
                   timeout=30)
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", "vaultproxy", "-t", "C,,",
                    "-i", str(ca)], check=True, timeout=30)
    return home


def _chromium(env: Env, home: Path, names: list[str]) -> dict[str, str]:
    """Load https://NAME:PORT/ for each name; "ok" or the navigation error."""
    from playwright.sync_api import Error, sync_playwright

    rules = ", ".join(f"MAP {n} 127.0.0.1" for n in (GOOD, EVIL, WILD))
    results: dict[str, str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            env={"HOME": str(home), "PATH": os.environ["PATH"]},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  f"--host-resolver-rules={rules}"],
        )
        try:
            page = browser.new_page()
            for name in names:
                try:
                    page.goto(f"https://{name}:{env.server.port}/", timeout=15000)
                    results[name] = page.inner_text("body").strip()
                except Error as e:
                    results[name] = str(e).splitlines()[0]
        finally:
            browser.close()
    return results


def test_chromium(env: Env) -> None:
    got = _chromium(env, _nssdb_home(env, env.constrained, "constrained"), [GOOD, WILD, EVIL])
    assert got[GOOD] == "ok" and got[WILD] == "ok"
    assert "ERR_CERT" in got[EVIL], got[EVIL]
    twin = _chromium(env, _nssdb_home(env, env.unconstrained, "unconstrained"), [EVIL])
    assert twin[EVIL] == "ok"


# -- the running proxy, check, reload, reissue, trust.sh -------------------------------------

def test_proxy_leaves_carry_only_permitted_names(env: Env) -> None:
    ctx = ssl.create_default_context(cafile=str(env.constrained))
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10) as raw:
        raw.sendall(f"CONNECT {GOOD}:443 HTTP/1.1\r\nHost: {GOOD}:443\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(raw, server_hostname=GOOD) as s:  # verified under constraints
            sans = s.getpeercert()["subjectAltName"]
    # The upstream's certificate names api.test, *.api.test, localhost and 127.0.0.1, and
    # mitmproxy copies them; under a constrained CA only the permitted name stays.
    assert sans == (("DNS", GOOD),)
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", env.proxy.url,
         "--cacert", str(env.constrained), f"https://{GOOD}/through"],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]},
    )
    assert r.stdout == "200", r.stderr


def test_new_host_warns_until_reissue_and_trust_replaces(env: Env) -> None:
    home = env.proxy.home.path
    services = home / "services.toml"
    original = services.read_text()
    services.write_text(original + '[[service]]\nname = "late"\nhosts = ["late.example"]\n'
                        'mode = "host_inject"\nauth = "bearer"\n')
    try:
        checked = cli(home, "check")
        assert "late.example is outside the CA's name constraints" in checked.stderr
        cli(home, "reload")
        assert "late.example is outside" in env.proxy.output()
        before = x509.load_pem_x509_certificate((home / "ca.crt").read_bytes())
        out = cli(home, "ca", "reissue").stdout
        assert "late.example" in out and "trust.sh" in out
        after = x509.load_pem_x509_certificate((home / "ca.crt").read_bytes())
        assert after.public_key() == before.public_key() and after.subject == before.subject
        assert after.serial_number != before.serial_number
        assert constraints.outside(after, ["late.example", GOOD]) == []
        assert "outside" not in cli(home, "check").stderr
        # ca/trust.sh replaces the earlier certificate of this CA (same subject), and keeps
        # another CA's (a rotation's next CA has another subject).
        anchors = env.base / "anchors"
        anchors.mkdir()
        old_name = "vaultproxy-0123456789abcdef.crt"
        (anchors / old_name).write_bytes(env.constrained.read_bytes())
        (anchors / "vaultproxy-other.crt").write_bytes((home / "upstream-ca.pem").read_bytes())
        r = subprocess.run(["sh", str(REPO / "ca" / "trust.sh"), "--dry-run", "--os", "debian",
                            str(home / "ca.crt")], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "VAULTPROXY_ANCHOR_DIR": str(anchors)})
        assert r.returncode == 0, r.stderr
        assert f"would run: rm -f {anchors / old_name}" in r.stdout
        assert "vaultproxy-other.crt" not in r.stdout
        assert f"would run: install -m 0644 {home / 'ca.crt'} {anchors}/vaultproxy-" in r.stdout
    finally:
        services.write_text(original)
        cli(home, "ca", "reissue")


def test_rotation_keeps_a_constrained_ca_constrained(tmp_path: Path) -> None:
    block = '[[service]]\nname = "r"\nhosts = ["r.example"]\nmode = "host_inject"\n' \
            'auth = "bearer"\n'
    home = ProxyHome.create(tmp_path, block).path
    cli(home, "ca", "init", "--constrain")
    cli(home, "ca", "rotate")
    nxt = x509.load_pem_x509_certificate((home / "ca.next.crt").read_bytes())
    assert constraints.outside(nxt, ["r.example"]) == []
    assert constraints.outside(nxt, ["other.example"]) == ["other.example"]
    cli(home, "ca", "rotate", "--finish")
    now = x509.load_pem_x509_certificate((home / "ca.crt").read_bytes())
    assert now.fingerprint(hashes.SHA256()) == nxt.fingerprint(hashes.SHA256())
    # Twin: an unconstrained CA rotates into an unconstrained one.
    (tmp_path / "plain").mkdir()
    plain = ProxyHome.create(tmp_path / "plain", block).path
    cli(plain, "ca", "rotate")
    assert constraints.constraints_of(
        x509.load_pem_x509_certificate((plain / "ca.next.crt").read_bytes())) is None
