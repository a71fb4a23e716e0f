# ruff: noqa: E501  (table rows, config templates)
"""Peers, side by side: vaultproxy against the proxies a user would pick instead, in one run.

    .venv/bin/python bench/peers.py --install --quick    # fetch the peers into bench/.peers/, one short round
    .venv/bin/python bench/peers.py --rounds 3           # all workloads + hostile table, ~16 min
    .venv/bin/python bench/peers.py --quick              # one short round (~5 min)
    .venv/bin/python bench/peers.py --startup-only       # vaultproxy alone: start-up time, RSS
    .venv/bin/python bench/peers.py --quick --only vaultproxy,srt --no-hostile

Targets (each injects one bearer credential for the upstream; see docs/BENCHMARKS.md):
  direct       the client talks to the upstream itself (the agent holds the secret)
  mitmdump     bare `mitmdump -q` from the project venv (injects nothing: the floor)
  vaultproxy   `vaultproxy run --workers 1`, host_inject services (the agent sends no credential)
  agentcage    agentcage 0.40.2's mitmproxy addon (placeholder in Authorization -> secret)
  kotw         keys-on-the-wire 1.1.1's mitmproxy addon, `static` backend (placeholder -> secret)
  srt          Anthropic's sandbox-runtime 0.0.78: its proxy with `tlsTerminate` and a masked
               env var credential (sentinel -> secret), run by bench/srt_proxy.mjs without a
               sandboxed child (the proxy is what is measured)

The peers install from their registries into bench/.peers/ (gitignored): one venv per
mitmproxy addon (with the mitmproxy it declares), npm for sandbox-runtime (needs ripgrep and
socat from Debian, which its start-up checks for). A peer that fails to install or start is
reported with its error; the others still run.

Workloads, targets interleaved round by round (`--rounds N`; cells are medians over rounds):
  10 keep-alive conns   bench/keepalive.py -c 10 (exactly 10 connections; hey's Go transport
                        sometimes dials spare ones), 1 KB GET: req/s and CPU ms per request
                        (utime+stime of the target's whole process tree from /proc,
                        before/after)
  1 conn sequential     http.client, one tunnel, p50 per request; "added" = minus direct's p50
  new conn per request  hey -c 10 -disable-keepalive: req/s
  SSE                   bench/sse.py's upstream: ~40-byte events 50 ms apart; p50/p99 delay
                        from write to read, added over direct
Then once per target, the hostile-reply table: each trickster shape (tests/security's
response-gate cases plus the reflected forms of test_exfil_redaction) served by the raw
upstream of tests/harness/hostile.py, which echoes the credential it received; a shape
"leaks" when any form of the credential reaches the client's bytes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "bench" / ".peers"
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:peers:begin -->", "<!-- bench:peers:end -->"
SBEGIN, SEND = "<!-- bench:vp-startup:begin -->", "<!-- bench:vp-startup:end -->"

AGENTCAGE = ("agentcage", "0.40.2")
KOTW = ("keys-on-the-wire", "1.1.1")
SRT = ("@anthropic-ai/sandbox-runtime", "0.0.78")
# agentcage declares no mitmproxy: its egress image is FROM the official mitmproxy image
# (pinned by digest); we give it the newest mitmproxy release. keys-on-the-wire declares
# mitmproxy>=11.0, which resolves to the same release.
AGENTCAGE_PIP = ["agentcage==0.40.2", "mitmproxy==12.3.1", "pyyaml", "cryptography>=41"]
KOTW_PIP = ["keys-on-the-wire==1.1.1"]

# --- the client's view: what reaches the agent, in every form it could decode ----------------

_HEX_RUN = re.compile(rb"(?:[0-9a-fA-F]{2}){8,}")


def _decode_body(body: bytes, codings: list[bytes]) -> bytes | None:
    """The body as a client that honours Content-Encoding reads it (None if it cannot)."""
    import brotli  # type: ignore[import-untyped]
    import zstandard

    out = body
    for coding in reversed([c.strip().lower() for c in codings if c.strip()]):
        try:
            if coding in (b"gzip", b"x-gzip"):
                out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(out)
            elif coding == b"deflate":
                out = zlib.decompress(out)
            elif coding == b"br":
                out = brotli.decompress(out)
            elif coding == b"zstd":
                out = zstandard.ZstdDecompressor().decompressobj().decompress(out)
            elif coding != b"identity":
                return None
        except Exception:  # noqa: BLE001 - a body that does not decode is read as it is
            return None
    return out


def client_view(reply: bytes) -> bytes:
    """Everything a client could read from ``reply`` (the raw bytes of one exchange): the raw
    bytes, and what an HTTP/1.1 client (h11) reads from them -- reason phrases, header fields,
    1xx responses, the de-chunked body, trailers -- plus the body decoded by its
    Content-Encoding, plus every hex run decoded. Feed it to the independent detector
    (tests/security/test_exfil_redaction.py ``leaks``), which decodes JSON, percent and base64
    forms itself. A secret split by chunk framing or compressed is whole here."""
    import h11

    parts = [reply]
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    body = b""
    codings: list[bytes] = []
    try:
        conn.receive_data(reply)
        conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.InformationalResponse | h11.Response):
                parts.append(bytes(event.reason))
            if isinstance(event, h11.InformationalResponse | h11.Response | h11.EndOfMessage):
                parts.extend(bytes(k) + b": " + bytes(v) for k, v in event.headers)
            if isinstance(event, h11.Response):
                codings = [c for k, v in event.headers if k == b"content-encoding" for c in v.split(b",")]
            if isinstance(event, h11.Data):
                body += bytes(event.data)
    except h11.RemoteProtocolError:
        pass
    parts.append(body)
    decoded = _decode_body(body, codings) if codings else None
    if decoded is not None:
        parts.append(decoded)
    parts.append(re.sub(rb"\r\n[ \t]+", b" ", reply))  # obs-fold, as a client that unfolds reads it
    parts.append(re.sub(rb"\r\n[ \t]+", b"", reply))
    for blob in (reply, body):  # a gzip member anywhere (a gzip transfer-coding, a cut stream)
        for m in re.finditer(rb"\x1f\x8b\x08", blob):
            try:
                parts.append(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob[m.start():]))
            except zlib.error:
                continue
    for text in list(parts):
        for m in _HEX_RUN.finditer(text):
            try:
                parts.append(binascii.unhexlify(m.group()))
            except binascii.Error:
                continue
    return b"\n".join(parts)


def leaked(reply: bytes, secret: bytes) -> bool:
    """Did any form of ``secret`` reach the client?"""
    from tests.security.test_exfil_redaction import leaks

    return leaks(client_view(reply), secret)


def count_leaks(outcomes: dict[str, str]) -> tuple[int, int, int]:
    """(leaked, held, not judged) over one target's shape outcomes ("leak" / "held" / other)."""
    leak = sum(1 for v in outcomes.values() if v == "leak")
    held = sum(1 for v in outcomes.values() if v == "held")
    return leak, held, len(outcomes) - leak - held


# --- the trickster's shapes ---------------------------------------------------------------------

Reply = Callable[[bytes], bytes]


def _resp(head: bytes, body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


def shapes() -> dict[str, Reply]:
    """Every reply shape: the response-gate cases of tests/security/test_response_gate.py (by
    their path) and the reflected forms of test_exfil_redaction.py, plus a few error shapes."""
    import brotli
    import zstandard

    from tests.security.test_exfil_redaction import _body, reflected_forms
    from tests.security.test_response_gate import CASES

    out: dict[str, Reply] = {path: reply for path, (reply, _, _) in sorted(CASES.items())}
    js = b"Content-Type: application/json\r\n"

    def enc(coding: bytes, pack: Callable[[bytes], bytes]) -> Reply:
        return lambda c: (b"HTTP/1.1 200 OK\r\n" + js + b"Content-Encoding: " + coding
                          + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + _chunked([pack(_body(c))[i:i + 16] for i in range(0, len(pack(_body(c))), 16)]))

    def header_forms(c: bytes) -> bytes:
        head = b"".join(b"X-Echo-" + k.replace("_", "-").encode() + b": " + v + b"\r\n"
                        for k, v in reflected_forms(c).items())
        return _resp(js + head, b'{"headers": true}')

    out |= {
        "/reflect/body-raw": lambda c: _resp(js, b'{"token": "' + c + b'"}'),
        "/reflect/body-forms": lambda c: _resp(js, _body(c)),
        "/reflect/chunks-5-bytes": lambda c: b"HTTP/1.1 200 OK\r\n" + js
        + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked([_body(c)[i:i + 5] for i in range(0, len(_body(c)), 5)]),
        "/reflect/gzip": enc(b"gzip", gzip.compress),
        "/reflect/deflate": enc(b"deflate", zlib.compress),
        "/reflect/br": enc(b"br", brotli.compress),
        "/reflect/zstd": enc(b"zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        "/reflect/hex": lambda c: _resp(js, b'{"hex": "' + c.hex().encode() + b'"}'),
        "/reflect/header": lambda c: _resp(b"X-Echo: " + c + b"\r\n", b"ok"),
        "/reflect/header-forms": header_forms,
        "/reflect/set-cookie": lambda c: _resp(b"Set-Cookie: sid=" + c + b"; Path=/; Secure\r\n", b"ok"),
        "/reflect/redirect-location": lambda c: _resp(
            b"Location: https://elsewhere.test/cb?token=" + base64.urlsafe_b64encode(c) + b"\r\n", b"", b"302 Found"),
        "/reflect/www-authenticate": lambda c: _resp(
            b'WWW-Authenticate: Bearer error="invalid_token", token="' + c + b'"\r\n', b"", b"401 Unauthorized"),
        "/reflect/error-page": lambda c: _resp(
            b"Content-Type: text/html\r\n", b"<h1>500</h1><pre>bad token " + c + b"</pre>", b"500 Internal Server Error"),
    }
    return out


# --- installing the peers -----------------------------------------------------------------------


def _pip_install(venv: Path, reqs: list[str], log: Path) -> str | None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *reqs],
                       capture_output=True, text=True, timeout=900)
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = [ln for ln in (r.stdout + r.stderr).splitlines() if "WARNING: Location" not in ln]
        return f"pip install {' '.join(reqs)} exited {r.returncode}: {' | '.join(tail[-3:])}"
    return None


def install(names: set[str]) -> dict[str, str | None]:
    """Install each peer into bench/.peers/ (idempotent); name -> error or None."""
    PEERS.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str | None] = {}
    if "agentcage" in names:
        errors["agentcage"] = _pip_install(PEERS / "agentcage", AGENTCAGE_PIP, PEERS / "agentcage.log")
    if "kotw" in names:
        errors["kotw"] = _pip_install(PEERS / "kotw", KOTW_PIP, PEERS / "kotw.log")
    if "srt" in names:
        d = PEERS / "srt"
        d.mkdir(exist_ok=True)
        missing = [b for b in ("rg", "socat", "bwrap") if shutil.which(b) is None]
        if missing:
            errors["srt"] = f"sandbox-runtime's start-up check needs {missing} (apt-get install ripgrep socat bubblewrap)"
        else:
            r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(d), f"{SRT[0]}@{SRT[1]}"],
                               capture_output=True, text=True, timeout=900)
            (PEERS / "srt.log").write_text(r.stdout + r.stderr)
            errors["srt"] = None if r.returncode == 0 else f"npm install exited {r.returncode}: {r.stderr.strip()[-300:]}"
    return errors


def installed_version(name: str) -> str | None:
    if name in ("agentcage", "kotw"):
        dist = {"agentcage": "agentcage", "kotw": "keys-on-the-wire"}[name]
        py = PEERS / name / "bin" / "python"
        if not py.exists():
            return None
        r = subprocess.run([str(py), "-c", f"from importlib.metadata import version as v; print(v('{dist}'), v('mitmproxy'))"],
                           capture_output=True, text=True)
        return r.stdout.strip().replace(" ", ", mitmproxy ") or None
    pkg = PEERS / "srt" / "node_modules" / "@anthropic-ai" / "sandbox-runtime" / "package.json"
    return json.loads(pkg.read_text())["version"] if pkg.exists() else None


# --- upstreams and targets ----------------------------------------------------------------------


@dataclass
class Upstreams:
    """nginx (1 KB GET), the SSE writer, the hostile raw upstream; one CA bundle for all."""

    nginx: object
    sse: object
    hostile: object
    bundle: Path


@dataclass
class Peer:
    name: str
    label: str
    work: Path
    up: Upstreams
    secret: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    proxy_auth: str | None = None  # Proxy-Authorization value (srt)
    placeholder: str | None = None  # what the agent sends instead of the secret
    notes: list[str] = field(default_factory=list)

    # where the agent aims each workload: (host, port); peers reach upstreams by address
    def address(self, kind: str) -> tuple[str, int]:
        port = {"nginx": self.up.nginx.port, "sse": self.up.sse.port, "hostile": self.up.hostile.port}[kind]  # type: ignore[attr-defined]
        return "127.0.0.1", port

    @property
    def proxied(self) -> bool:
        return self.port != 0

    @property
    def agent_headers(self) -> list[tuple[str, str]]:
        if self.name in ("direct", "mitmdump"):  # nothing injects: the agent holds the secret
            return [("Authorization", f"Bearer {self.secret}")]
        if self.placeholder:
            return [("Authorization", f"Bearer {self.placeholder}")]
        return []

    @property
    def hey_proxy(self) -> str | None:
        if not self.proxied:
            return None
        if self.proxy_auth:
            user, _, pw = base64.b64decode(self.proxy_auth.split()[1]).decode().partition(":")
            return f"http://{user}:{pw}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None:
            from bench.upstream import stop_process

            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the peer's whole tree
            except OSError:
                pass
            stop_process(self.proc, signal.SIGTERM, wait=20)
            self.proc = None

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _mitm_args(port: int, confdir: Path, bundle: Path) -> list[str]:
    return ["-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={bundle}"]


class Direct(Peer):
    pass


class BareMitmdump(Peer):
    def start(self) -> None:
        from bench.upstream import free_port, wait_port

        self.port = free_port()
        self._spawn([str(Path(sys.executable).parent / "mitmdump"), *_mitm_args(self.port, self.work / "confdir", self.up.bundle)])
        assert self.proc is not None
        wait_port(self.port, self.proc, self.name, timeout=60)


AGENTCAGE_YAML = """\
domains:
  mode: allowlist
  list: ["127.0.0.1"]
rate_limit:
  requests_per_second: 1000000
  burst: 1000000
secret_injection:
  rules:
    - env: VPBENCH_TOKEN
      placeholder: "{{{{VPBENCH_TOKEN}}}}"
      inject_to: ["127.0.0.1"]
"""


class Agentcage(Peer):
    def start(self) -> None:
        from bench.upstream import free_port, wait_port

        venv = PEERS / "agentcage"
        addon = next((venv / "lib").glob("python3*/site-packages/agentcage/data/proxy/addon.py"))
        self.work.mkdir(parents=True, exist_ok=True)
        cfg = self.work / "agentcage.yaml"
        cfg.write_text(AGENTCAGE_YAML.format())
        self.placeholder = "{{VPBENCH_TOKEN}}"
        env = {**os.environ, "AGENTCAGE_CONFIG": str(cfg), "VPBENCH_TOKEN": self.secret,
               "AGENTCAGE_SECRETS_DIR": str(self.work / "no-secrets-dir")}
        self.port = free_port()
        self._spawn([str(venv / "bin" / "mitmdump"), *_mitm_args(self.port, self.work / "confdir", self.up.bundle),
                     "-s", str(addon)], env=env)
        assert self.proc is not None
        wait_port(self.port, self.proc, self.name, timeout=60)


class Kotw(Peer):
    def start(self) -> None:
        from bench.upstream import free_port, wait_port

        venv = PEERS / "kotw"
        self.work.mkdir(parents=True, exist_ok=True)
        store = self.work / "secrets.yaml"
        store.write_text(json.dumps({"secrets": {"VPBENCH": self.secret}}))  # JSON is YAML
        store.chmod(0o600)
        self.placeholder = "KOW_PLACEHOLDER_vpbench_0123456789"
        cfg = self.work / "bindings.yaml"
        cfg.write_text(json.dumps({
            "version": 1,
            "binding_source": "file",
            "secrets": {"VPBENCH": {
                "placeholder": self.placeholder,
                "inject": {"type": "header", "header": "Authorization", "format": "Bearer {VPBENCH}"},
                "bindings": [{"host": "127.0.0.1"}],
            }},
            "audit": {"path": str(self.work / "audit.jsonl")},
            "backend": {"type": "static", "config": {"path": str(store)}},
        }))
        cfg.chmod(0o600)
        self.port = free_port()
        # `kow`'s own entry point is mitmdump -s kow/addon.py on a fixed port; the later
        # --listen-port wins.
        self._spawn([str(venv / "bin" / "python"), "-m", "kow",
                     *_mitm_args(self.port, self.work / "confdir", self.up.bundle),
                     "--set", f"kow_config={cfg}"])
        assert self.proc is not None
        wait_port(self.port, self.proc, self.name, timeout=60)


class Srt(Peer):
    def start(self) -> None:
        pkg = PEERS / "srt" / "node_modules" / "@anthropic-ai" / "sandbox-runtime"
        self.work.mkdir(parents=True, exist_ok=True)
        cfg = self.work / "srt.json"
        cfg.write_text(json.dumps({"runtime": {
            "network": {"allowedDomains": ["127.0.0.1"], "deniedDomains": [], "tlsTerminate": {}},
            "filesystem": {"denyRead": [], "allowWrite": [], "denyWrite": []},
            "credentials": {"envVars": [{"name": "VPBENCH_TOKEN", "mode": "mask", "injectHosts": ["127.0.0.1"]}]},
        }}))
        out = self.work / "srt-ready.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "VPBENCH_TOKEN": self.secret, "NODE_EXTRA_CA_CERTS": str(self.up.bundle)}
        self._spawn(["node", str(REPO / "bench" / "srt_proxy.mjs"), str(pkg), str(cfg), str(out)], env=env)
        deadline = time.monotonic() + 60
        while not out.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"srt did not start; see {self.work / 'srt.log'}")
            time.sleep(0.05)
        time.sleep(0.05)
        ready = json.loads(out.read_text())
        self.port = int(ready["port"])
        if ready.get("token"):
            self.proxy_auth = "Basic " + base64.b64encode(f"srt:{ready['token']}".encode()).decode()
        self.placeholder = ready["sentinels"]["VPBENCH_TOKEN"]


VP_SERVICES = """\
[[service]]
name = "{name}"
hosts = ["{host}"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "bundle.pem"

"""


class Vaultproxy(Peer):
    workers: int = 1
    vp: object = None
    HOSTS = {"nginx": "hi.bench.test", "sse": "sse.bench.test", "hostile": "h.api.test"}

    def address(self, kind: str) -> tuple[str, int]:
        return self.HOSTS[kind], 443

    def _home(self) -> object:
        from bench.targets import VaultproxyHome
        from tests.harness.proxy import ProxyHome

        if getattr(self, "vp_home", None) is not None:
            return self.vp_home
        base = self.work / "home-base"
        toml = "".join(VP_SERVICES.format(name=n, host=h, port=p) for n, h, p in (
            ("hi", self.HOSTS["nginx"], self.up.nginx.port),  # type: ignore[attr-defined]
            ("sse", self.HOSTS["sse"], self.up.sse.port),  # type: ignore[attr-defined]
            ("h", self.HOSTS["hostile"], self.up.hostile.port),  # type: ignore[attr-defined]
        ))
        base.mkdir(parents=True, exist_ok=True)
        secret_map = {"hi": self.secret, "sse": self.secret, "h": self.secret}
        home = ProxyHome.create(base, toml, dict(secret_map), files={"bundle.pem": self.up.bundle.read_bytes()})
        self.vp_home = VaultproxyHome(home.path, home.password_file, secret_map)
        return self.vp_home

    def start(self) -> None:
        from bench.targets import Vaultproxy as VpTarget

        t = VpTarget(self.name, self.label, self.up.nginx, self.work)  # type: ignore[arg-type]
        t.home, t.service, t.workers = self._home(), "hi", self.workers  # type: ignore[assignment]
        t.start()
        self.vp = t
        self.proc = t.proc
        assert t.proxy is not None
        self.port = int(t.proxy.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.vp is not None:
            self.vp.stop()  # type: ignore[attr-defined]
            self.vp = None
            self.proc = None


# --- the agent's side ---------------------------------------------------------------------------


def open_tls(t: Peer, kind: str, timeout: float = 30) -> ssl.SSLSocket:
    """A TLS connection to the workload's upstream, through the target's CONNECT tunnel (any
    proxy CA accepted: each mints its own leaf) or straight to the upstream for direct."""
    host, port = t.address(kind)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    if not t.proxied:
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.create_connection(("127.0.0.1", t.port), timeout=timeout)
        auth = f"Proxy-Authorization: {t.proxy_auth}\r\n" if t.proxy_auth else ""
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError(f"{t.name}: proxy closed the CONNECT")
            head += data
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"{t.name}: CONNECT refused: {head.splitlines()[0]!r}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(sock, server_hostname=host if not host[0].isdigit() else None)


def host_header(t: Peer, kind: str) -> str:
    host, port = t.address(kind)
    return host if port == 443 else f"{host}:{port}"


def check_injection(t: Peer) -> None:
    """One GET /auth: nginx must log exactly `Bearer <secret>` (the peer injected it)."""
    nginx = t.up.nginx
    before = nginx.auth_lines()  # type: ignore[attr-defined]
    conn = open_tls(t, "nginx")
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in t.agent_headers)
    conn.sendall(f"GET /auth HTTP/1.1\r\nHost: {host_header(t, 'nginx')}\r\n{hdrs}Connection: close\r\n\r\n".encode())
    from tests.harness import agent

    reply = agent.read_all(conn, None)
    deadline = time.monotonic() + 5
    while nginx.auth_lines() == before and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)
    status = agent.status_of(reply)
    if status != 204 or nginx.last_authorization() != f"Bearer {t.secret}":  # type: ignore[attr-defined]
        raise RuntimeError(f"{t.name}: injection check failed (status {status}; upstream did not see the secret)")


def sequential_p50(t: Peer, count: int, limit_s: float) -> float:
    """One keep-alive tunnel, GET /1k one at a time; p50 ms (perf_counter per request)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = t.address("nginx")
    if t.proxied:
        conn = http.client.HTTPSConnection("127.0.0.1", t.port, context=ctx, timeout=20)
        conn.set_tunnel(host, port, headers={"Proxy-Authorization": t.proxy_auth} if t.proxy_auth else None)
    else:
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)
    hdrs = dict(t.agent_headers)
    times: list[float] = []
    start = time.perf_counter()
    try:
        while len(times) < count and time.perf_counter() - start < limit_s:
            t0 = time.perf_counter()
            conn.request("GET", "/1k", headers=hdrs)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{t.name}: sequential GET got {r.status}")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return statistics.median(times) * 1000


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """utime+stime and stime alone of these processes, in seconds (/proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = kernel = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
        kernel += int(f[12])
    return total / tick, kernel / tick


def sse_delays(t: Peer, interval: float) -> list[float]:
    from bench.sse import Run, stream

    run = Run(t.name)
    conn = open_tls(t, "sse", timeout=120)
    stream(conn, [("Host", host_header(t, "sse")), *t.agent_headers], run, interval)
    return run.delays_ms


def measure(t: Peer, d: dict[str, float], r: dict[str, object]) -> None:
    from bench.load import run_hey, run_keepalive
    from bench.run import settle

    check_injection(t)
    host, port = t.address("nginx")
    url = f"https://{host}:{port}/1k"
    hdrs = tuple(f"{k}: {v}" for k, v in t.agent_headers)
    run_hey(url, proxy=t.hey_proxy, headers=hdrs, duration_s=d["warm"])
    pids = t.pids()

    def problem(what: str, res: object) -> None:
        r.setdefault("problems", []).append(f"{what}: {res.problem()}")  # type: ignore[attr-defined,union-attr]

    settle(pids)
    c0 = cpu_seconds(pids)
    res = run_keepalive(url, proxy=t.hey_proxy, headers=hdrs, conns=10, duration_s=d["conc"])
    c1 = cpu_seconds(pids)
    n = sum(res.statuses.values())
    if res.ok():
        r["conc10_rps"] = res.rps
        if pids:
            r["cpu_ms"] = (c1[0] - c0[0]) * 1000 / n
            r["sys_ms"] = (c1[1] - c0[1]) * 1000 / n
    else:
        problem("10 keep-alive conns", res)
    settle(pids)
    sequential_p50(t, 50, d["warm"])
    r["seq_p50_ms"] = sequential_p50(t, int(d["seq_n"]), d["seq"])
    settle(pids)
    res = run_hey(url, proxy=t.hey_proxy, headers=hdrs, conns=10, duration_s=d["new"], keepalive=False)
    if res.ok():
        r["newconn_rps"] = res.rps
    else:
        problem("new connection per request", res)
    settle(pids)
    delays = sse_delays(t, d["sse_interval"])
    if len(delays) == int(d["sse_events"]):
        s = sorted(delays)
        r["sse_p50_ms"] = statistics.median(s)
        r["sse_p99_ms"] = s[min(len(s) - 1, int(0.99 * len(s)))]
        r["sse_max_ms"] = s[-1]
    else:
        r.setdefault("problems", []).append(f"SSE: {len(delays)} of {int(d['sse_events'])} events arrived")


def hostile_table(t: Peer, secret: bytes, shape_paths: list[str]) -> dict[str, str]:
    """Per shape: "leak" (some form of the secret reached the client), "held", or why the
    shape could not be judged (the upstream never got the secret, or no reply at all)."""
    from tests.harness import agent

    up = t.up.hostile
    out: dict[str, str] = {}
    for path in shape_paths:
        before = len(up.received)  # type: ignore[attr-defined]
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in t.agent_headers)
        try:
            conn = open_tls(t, "hostile", timeout=15)
            reply = agent.exchange(
                conn, f"GET {path} HTTP/1.1\r\nHost: {host_header(t, 'hostile')}\r\n{hdrs}Connection: close\r\n\r\n".encode(),
                None,  # the point is to read whatever arrives; no canary scan
            )
        except (OSError, ConnectionError) as e:
            out[path] = f"error: {e}"[:80]
            continue
        got = [rq for rq in up.received[before:] if rq.path == path]  # type: ignore[attr-defined]
        if not got or got[-1].credential != secret:
            out[path] = "not injected"
        elif leaked(reply, secret):
            out[path] = "leak"
        else:
            out[path] = "held"
    return out


# --- vaultproxy alone: start-up time and RSS -----------------------------------------------------


def vaultproxy_startup(up: Upstreams, work: Path, secret: str, runs: int, workers: int) -> dict[str, float]:
    """`vaultproxy run` from spawn to run.json, and to the first 200 through it; RSS per
    worker just after that first 200. Medians over ``runs`` starts."""
    from bench.run import rss_kib

    t = Vaultproxy("vaultproxy", "vaultproxy", work / f"startup-{workers}", up, secret)
    t.workers = workers
    home = t._home()
    to_json, to_200, rss, rss_json, ref = [], [], [], [], []
    for _ in range(runs):
        r0 = time.monotonic()  # a yardstick for how loaded the machine is: the engine's import alone
        subprocess.run([sys.executable, "-c", "import mitmproxy.tools.dump"], check=True)
        ref.append((time.monotonic() - r0) * 1000)
        run_json = home.path / "run.json"  # type: ignore[attr-defined]
        run_json.unlink(missing_ok=True)
        t0 = time.monotonic()
        t.start()
        t1 = time.monotonic()
        rss_json.append(statistics.mean((rss_kib(p, "VmRSS") or 0) / 1024 for p in t.vp.pids))  # type: ignore[attr-defined]
        while True:
            try:
                conn = open_tls(t, "nginx", timeout=10)
                conn.sendall(b"GET /1k HTTP/1.1\r\nHost: hi.bench.test\r\nConnection: close\r\n\r\n")
                from tests.harness import agent

                if agent.status_of(agent.read_all(conn, None)) == 200:
                    break
            except (OSError, ConnectionError):
                pass
            if time.monotonic() - t0 > 60:
                raise RuntimeError("no 200 through vaultproxy within 60 s")
            time.sleep(0.01)
        t2 = time.monotonic()
        pids = t.vp.pids  # type: ignore[attr-defined]  # worker 0 and the others, from run.json
        rss.append(statistics.mean((rss_kib(p, "VmRSS") or 0) / 1024 for p in pids))
        to_json.append((t1 - t0) * 1000)
        to_200.append((t2 - t0) * 1000)
        t.stop()
    return {"ready_json_ms": statistics.median(to_json), "first_200_ms": statistics.median(to_200),
            "first_200_min_ms": min(to_200), "first_200_max_ms": max(to_200),
            "rss_per_worker_mib": statistics.median(rss), "rss_at_json_mib": statistics.median(rss_json),
            "runs": runs, "workers": workers,
            "import_mitmproxy_ms": statistics.median(ref)}


# --- report -------------------------------------------------------------------------------------


def _cell(v: object, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def render(meta: dict[str, object], labels: dict[str, str], res: dict[str, dict[str, object]],
           rounds: list[dict[str, dict[str, object]]], hostile: dict[str, dict[str, str]],
           skipped: list[str]) -> str:
    direct = res.get("direct", {})
    mitm = res.get("mitmdump", {})
    lines = [
        f"Run {meta['date']}: `{meta['command']}` — {meta['nproc']} CPUs ({meta['cpu']}), Python {meta['python']}, "
        f"load average before {meta['load_before']}, after {meta['load_after']}; {meta['rounds']} round(s), "
        f"run took {meta['elapsed']:.0f} s.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",  # type: ignore[attr-defined]
        "",
        "| target | 10 keep-alive conns, req/s | CPU ms/request (kernel part) | CPU vs bare mitmdump | 1 conn sequential, p50 added | new conn per request, req/s | SSE added p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        r = res.get(name)
        if r is None:
            lines.append(f"| {label} | not measured | | | | | |")
            continue
        cpu = r.get("cpu_ms")
        ratio = f"{float(cpu) / float(mitm['cpu_ms']):.2f}×" if cpu and mitm.get("cpu_ms") else "—"  # type: ignore[arg-type]
        if name == "direct":
            seq, sse = _cell(r.get("seq_p50_ms"), "{:.2f} ms (the base)"), "base: " + _cell(r.get("sse_p50_ms"), "{:.2f}") + " / " + _cell(r.get("sse_p99_ms"), "{:.2f}")
        else:
            seq = _cell(float(r["seq_p50_ms"]) - float(direct["seq_p50_ms"]) if r.get("seq_p50_ms") and direct.get("seq_p50_ms") else None, "+{:.2f} ms")  # type: ignore[arg-type]
            sse = (_cell(float(r["sse_p50_ms"]) - float(direct["sse_p50_ms"]), "+{:.1f}") + " / " + _cell(float(r["sse_p99_ms"]) - float(direct["sse_p99_ms"]), "+{:.1f}")
                   if r.get("sse_p50_ms") is not None and direct.get("sse_p50_ms") is not None else "—")  # type: ignore[arg-type]
        lines.append(f"| {label} | {_cell(r.get('conc10_rps'), '{:,.0f}')} | {(_cell(cpu, '{:.2f}') + _cell(r.get('sys_ms'), ' ({:.2f})')) if name != 'direct' else '— (nginx)'} | {ratio if name not in ('direct',) else '—'} | {seq} | {_cell(r.get('newconn_rps'), '{:,.0f}')} | {sse} |")
    if len(rounds) > 1:
        lines += ["", "CPU ms/request per round (interleaved): " + "; ".join(
            f"{labels[n]} " + ", ".join(_cell(rd.get(n, {}).get("cpu_ms"), "{:.3f}") for rd in rounds)
            for n in labels if n != "direct")]
    probs = [f"{labels[n]}: {p}" for n in labels for p in res.get(n, {}).get("problems", [])]  # type: ignore[attr-defined]
    if skipped or probs:
        lines += ["", "Not measured / failed:", *[f"- {s}" for s in skipped + probs]]
    if hostile:
        names = [n for n in labels if n in hostile]
        lines += ["", "Hostile replies: how many of the trickster's shapes let some form of the credential reach the client",
                  "(leaked / held / not judged — not judged: the peer did not inject, or the exchange failed).", "",
                  "| target | leaked | held | not judged |", "|---|---|---|---|"]
        for n in names:
            leak, held, other = count_leaks(hostile[n])
            lines.append(f"| {labels[n]} | {leak} of {len(hostile[n])} | {held} | {other} |")
        lines += ["", "<details><summary>Per shape</summary>", "",
                  "| shape | " + " | ".join(labels[n] for n in names) + " |", "|---|" + "---|" * len(names)]
        for path in next(iter(hostile.values())):
            lines.append(f"| `{path}` | " + " | ".join(hostile[n].get(path, "—") for n in names) + " |")
        lines += ["", "</details>"]
    return "\n".join(lines)


def render_startup(meta: dict[str, object], startup: list[dict[str, float]]) -> str:
    lines = [f"Run {meta['date']}: `{meta['command']}`, load average before {meta['load_before']}, "
             f"after {meta['load_after']}."]
    for s in startup:
        lines += ["", f"vaultproxy alone, `--workers {s['workers']:.0f}`, median of {s['runs']:.0f} starts: "
                  f"spawn → run.json {s['ready_json_ms']:.0f} ms, spawn → first 200 through it {s['first_200_ms']:.0f} ms "
                  f"({s['first_200_min_ms']:.0f}–{s['first_200_max_ms']:.0f}), "
                  f"RSS per worker at run.json {s['rss_at_json_mib']:.1f} MiB, just after the first 200 {s['rss_per_worker_mib']:.1f} MiB "
                  f"(yardstick: `python -c 'import mitmproxy.tools.dump'` took {s['import_mitmproxy_ms']:.0f} ms)."]
    return "\n".join(lines)


def write_doc(body: str | None, startup: str | None) -> None:
    """Splice the results between their markers in docs/BENCHMARKS.md (the prose around
    them survives a re-run)."""
    from bench.report import _splice

    text = DOC.read_text()
    if body is not None:
        text = _splice(text, BEGIN, END, body)
    if startup is not None:
        text = _splice(text, SBEGIN, SEND, startup)
    DOC.write_text(text)


# --- main ---------------------------------------------------------------------------------------

ALL = ["direct", "mitmdump", "vaultproxy", "agentcage", "kotw", "srt"]
LABELS = {"direct": "direct", "mitmdump": "bare mitmdump", "vaultproxy": "vaultproxy (host_inject, 1 worker)",
          "agentcage": "agentcage", "kotw": "keys-on-the-wire", "srt": "sandbox-runtime"}
CLASSES: dict[str, type[Peer]] = {"direct": Direct, "mitmdump": BareMitmdump, "vaultproxy": Vaultproxy,
                                  "agentcage": Agentcage, "kotw": Kotw, "srt": Srt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help="(re)install the peers into bench/.peers/ first")
    ap.add_argument("--rounds", type=int, default=1, metavar="N")
    ap.add_argument("--quick", action="store_true", help="short durations")
    ap.add_argument("--only", default="", help="comma-separated targets (direct always runs)")
    ap.add_argument("--no-hostile", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=5, help="vaultproxy start-up samples (0: skip)")
    ap.add_argument("--startup-only", action="store_true",
                    help="only vaultproxy's start-up time and RSS (no workloads, no peers)")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    names = [n for n in ALL if not args.only or n in args.only.split(",") or n == "direct"]
    if args.startup_only:
        names, args.no_hostile, args.rounds = ["vaultproxy"], True, 0
        args.startup_runs = args.startup_runs or 5
    d = ({"warm": 1, "conc": 4, "seq": 3, "seq_n": 1000, "new": 4, "sse_events": 20, "sse_interval": 0.05}
         if args.quick else
         {"warm": 2, "conc": 8, "seq": 6, "seq_n": 3000, "new": 8, "sse_events": 60, "sse_interval": 0.05})
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "SSL_CERT_FILE", "SSLKEYLOGFILE"):
        os.environ.pop(k, None)
    skipped: list[str] = []
    peers = {n for n in names if n in ("agentcage", "kotw", "srt")}
    if args.install:
        for n, err in install(peers).items():
            if err:
                skipped.append(f"{LABELS[n]}: install failed: {err}")
    from importlib.metadata import version

    versions: dict[str, str] = {"mitmproxy (bare, vaultproxy)": version("mitmproxy")}
    for n in sorted(peers):
        v = installed_version(n)
        if v is None:
            skipped.append(f"{LABELS[n]}: not installed (run with --install)")
            names.remove(n)
        else:
            versions[LABELS[n]] = v
    from bench.report import machine
    from bench.sse import SseUpstream
    from bench.upstream import Nginx
    from tests.harness.hostile import HostileUpstream

    started, load_before = time.monotonic(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vp-peers-"))
    os.chmod(work, 0o755)
    secret = f"vpbench_{secrets.token_hex(10)}/Zq+w/9"
    table = shapes()
    nginx = Nginx(work / "nginx").start()
    sse = SseUpstream(work, int(d["sse_events"]), d["sse_interval"])
    hostile = HostileUpstream(work, {p: _script(f) for p, f in table.items()}).start()
    bundle = work / "bundle.pem"
    bundle.write_bytes(nginx.ca_file.read_bytes() + sse.ca_file.read_bytes() + hostile.ca_file.read_bytes())
    up = Upstreams(nginx, sse, hostile, bundle)
    targets = [CLASSES[n](n, LABELS[n], work / n, up, secret) for n in names]
    rounds: list[dict[str, dict[str, object]]] = []
    hostile_out: dict[str, dict[str, str]] = {}
    startup: list[dict[str, float]] = []
    try:
        for i in range(args.rounds if args.startup_only else max(1, args.rounds)):
            results: dict[str, dict[str, object]] = {}
            rounds.append(results)
            for t in targets:
                t0 = time.monotonic()
                r: dict[str, object] = {}
                try:
                    t.start()
                    measure(t, d, r)
                    results[t.name] = r
                    if i == 0 and not args.no_hostile:
                        hostile_out[t.name] = hostile_table(t, secret.encode(), list(table))
                except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                    skipped.append(f"{t.label} (round {i + 1}): {type(e).__name__}: {e}"[:300])
                finally:
                    t.stop()
                print(f"round {i + 1} {t.name}: {time.monotonic() - t0:.0f} s {r}", flush=True)
        if args.startup_runs and "vaultproxy" in names:
            for w in (1, 2):
                startup.append(vaultproxy_startup(up, work, secret, args.startup_runs, w))
    finally:
        for t in targets:
            t.stop()
        hostile.stop()
        sse.stop()
        nginx.stop()
    from bench.report import medians

    info = machine()
    cmd = "python bench/peers.py" + (f" --startup-only --startup-runs {args.startup_runs}" if args.startup_only else "") + (" --quick" if args.quick else "") + (f" --rounds {args.rounds}" if args.rounds > 1 else "") + (f" --only {args.only}" if args.only else "")
    meta = {**info, "command": cmd, "load_before": "/".join(f"{x:.2f}" for x in load_before),
            "load_after": "/".join(f"{x:.2f}" for x in os.getloadavg()), "elapsed": time.monotonic() - started,
            "rounds": len(rounds), "versions": versions}
    labels = {t.name: t.label for t in targets}
    text = render(meta, labels, medians(rounds), rounds, hostile_out, skipped) if rounds else None
    stext = render_startup(meta, startup) if startup else None
    for t_ in (text, stext):
        if t_:
            print(t_ + "\n")
    if not args.no_doc:
        write_doc(text, stext)
        print(f"wrote {DOC}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _script(make: Reply) -> Callable[[ssl.SSLSocket, object], None]:
    def script(conn: ssl.SSLSocket, req: object) -> None:
        conn.sendall(make(req.credential))  # type: ignore[attr-defined]
        conn.close()

    return script


if __name__ == "__main__":
    sys.exit(main())
