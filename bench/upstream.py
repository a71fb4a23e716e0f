"""The upstream every target talks to: nginx (Debian `nginx-light`) on 127.0.0.1 with a trustme
certificate valid for 127.0.0.1 and the bench's service names.

Paths it serves:
  /1k      a 1024-byte static file (the request/response workloads)
  /big     BIG_BYTES of zeros (the download workload)
  /auth    204; logs the Authorization header it received to auth.log (the injection check)
  /upload  WebDAV PUT: nginx reads the whole body before it answers 201 (the upload workload)
  /token   an OAuth 2.0 token answer, valid a day (bench/minted.py's token endpoint)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

BIG_BYTES = 100 * 1000 * 1000  # 100 MB (10^6 bytes per MB throughout the bench)
SERVICE_NAMES = ("ph.bench.test", "hi.bench.test", "squid.bench.test", "mt.bench.test")

TOKEN_JSON = (
    '{"access_token": "vpbench_minted_access_token", "token_type": "Bearer", "expires_in": 86400}'
)

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  log_format authlog '$http_authorization';
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  sendfile on;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/t-proxy; fastcgi_temp_path {d}/t-fcgi;
  uwsgi_temp_path {d}/t-uwsgi; scgi_temp_path {d}/t-scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    listen 127.0.0.1:{pt_port} ssl;
    ssl_certificate {d}/upstream.pem;
    ssl_certificate_key {d}/upstream.pem;
    root {d}/www;
    location = /auth {{ access_log {d}/auth.log authlog; return 204; }}
    location = /token {{
      default_type application/json;
      return 200 '{token_json}';
    }}
    location = /upload {{
      client_max_body_size 1g;
      client_body_buffer_size 1m;
      dav_methods PUT;
      root {d}/uploads;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 15
) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Nginx:
    workdir: Path
    port: int = 0
    pt_port: int = 0  # a second listener: the passthrough target (no proxy intercepts it)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.workdir / "upstream-ca.pem"

    @property
    def big_file(self) -> Path:
        return self.workdir / "www" / "big"

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx not found: apt-get install nginx-light")
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("127.0.0.1", *SERVICE_NAMES)
        cert.private_key_and_cert_chain_pem.write_to_path(str(d / "upstream.pem"))
        for sub in ("www", "uploads", "body"):
            (d / sub).mkdir(exist_ok=True)
        # nginx workers run as an unprivileged user when started as root.
        for sub in ("uploads", "body"):
            os.chmod(d / sub, 0o777)
        os.chmod(d, 0o755)
        (d / "www" / "1k").write_bytes(b"x" * 1023 + b"\n")
        with open(self.big_file, "wb") as f:
            chunk = b"\0" * (1 << 20)
            left = BIG_BYTES
            while left > 0:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
        self.port, self.pt_port = free_port(), free_port()
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=d, port=self.port, pt_port=self.pt_port,
                                          token_json=TOKEN_JSON))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(d), "-e", str(d / "nginx-error.log")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "nginx-stderr.log", "wb"),  # noqa: SIM115
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "nginx")
        return self

    def kill(self) -> None:
        """Down at once (SIGTERM: nginx's fast shutdown drops every open connection)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None

    def restart(self) -> None:
        """Up again on the same ports and certificate (the same config file)."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        d = self.workdir
        self.proc = subprocess.Popen(
            [binary, "-c", str(d / "nginx.conf"), "-p", str(d), "-e", str(d / "nginx-error.log")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "nginx-stderr.log", "ab"),  # noqa: SIM115
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "nginx")

    def auth_lines(self) -> int:
        try:
            return len((self.workdir / "auth.log").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def last_authorization(self) -> str | None:
        try:
            lines = (self.workdir / "auth.log").read_text().splitlines()
        except FileNotFoundError:
            return None
        return lines[-1] if lines else None

    def clear_uploads(self) -> None:
        for p in (self.workdir / "uploads").iterdir():
            p.unlink()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT)
