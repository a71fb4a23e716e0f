"""The demo's local upstream: a tiny HTTPS echo service for `make demo` (no internet needed).

    python scripts/demo_echo.py DEMO_HOME

Serves on 127.0.0.1 (a free port, written to DEMO_HOME/echo.port once listening) with a
certificate for ``echo.demo.internal`` from a demo CA it creates once (DEMO_HOME/echo-ca.pem,
which the demo service trusts through ``ca_cert``). Every request is answered with JSON
reflecting its method, path and headers, like httpbin.org/headers, and logged on stdout
with its Authorization header, so the `make demo` terminal shows what the upstream really
received while the agent sees the placeholder (vaultproxy redacts the response).

Demo only: the demo CA key stays in DEMO_HOME/echo/ and is trusted by nothing else.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "echo.demo.internal"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(home: Path) -> tuple[Path, Path]:
    """Create (once) the demo CA and a leaf for HOST; return (leaf cert+chain, leaf key)."""
    d = home / "echo"
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    if cert_file.exists() and key_file.exists() and (home / "echo-ca.pem").exists():
        return cert_file, key_file
    d.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("vaultproxy demo echo CA"))
        .issuer_name(_name("vaultproxy demo echo CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name(HOST)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_file.write_bytes(_pem_key(key))
    key_file.chmod(0o600)
    cert_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (d / "ca-key.pem").write_bytes(_pem_key(ca_key))
    (d / "ca-key.pem").chmod(0o600)
    (home / "echo-ca.pem").write_bytes(ca.public_bytes(pem))
    return cert_file, key_file


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-echo"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        out = {"method": self.command, "path": self.path, "headers": headers}
        if body:
            out["body"] = body.decode("utf-8", "replace")
        data = (json.dumps(out, indent=2) + "\n").encode()
        print(f"demo echo received: {self.command} {self.path}  "
              f"Authorization: {headers.get('Authorization', '(none)')}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per request is printed by _answer


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: demo_echo.py DEMO_HOME", file=sys.stderr)
        return 2
    home = Path(argv[1])
    cert, key = make_certs(home)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    tmp = home / ".echo.port.tmp"
    tmp.write_text(f"{port}\n")
    os.replace(tmp, home / "echo.port")
    print(f"demo echo: https://{HOST} served on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
