"""`vaultproxy doctor`: check what the first hour usually trips over, each failure with its fix.

The home and its files, the CA (and whether this machine's trust store holds it), the
running proxy, each service's upstream (DNS, then a verified TLS handshake), bubblewrap,
and this shell's agent environment. Exit 0 when nothing failed (warnings allowed), 1 else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultproxy.cli import add_home
from vaultproxy.cli.control import NotRunning, call
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home

TIMEOUT = 5.0


@dataclass
class Report:
    failed: int = 0
    lines: list[str] = field(default_factory=list)

    def ok(self, what: str) -> None:
        self.lines.append(f"ok    {what}")

    def warn(self, what: str, fix: str) -> None:
        self.lines.append(f"warn  {what}\n        fix: {fix}")

    def fail(self, what: str, fix: str) -> None:
        self.failed += 1
        self.lines.append(f"FAIL  {what}\n        fix: {fix}")


def _home(home: Home, r: Report) -> bool:
    if not home.path.is_dir():
        r.fail(f"no vaultproxy home at {home.path}", f"vaultproxy init --home {home.path}")
        return False
    mode = home.path.stat().st_mode & 0o777
    if mode & 0o077:
        r.fail(f"home {home.path} is mode {mode:o}", f"chmod 700 {home.path}")
    else:
        r.ok(f"home {home.path}")
    if not home.keystore.exists():
        r.fail(f"no keystore at {home.keystore}", f"vaultproxy init --home {home.path}")
    from vaultproxy.config.load import load_config
    from vaultproxy.errors import ConfigError

    try:
        load_config(home.services)
    except ConfigError as e:
        r.fail(f"{home.services} is invalid ({len(e.problems)} problem(s))",
               f"vaultproxy check --home {home.path} lists them")
    except VaultproxyError as e:
        r.fail(f"{home.services}: {e}", f"vaultproxy check --home {home.path}")
    else:
        r.ok(f"{home.services} is valid")
    return True


def _ca(home: Home, r: Report) -> None:
    from vaultproxy.ca import load_ca
    from vaultproxy.ca.bundle import _pem_blocks, system_ca_file

    try:
        ca = load_ca(home)
    except VaultproxyError as e:
        r.fail(f"CA: {e}", f"vaultproxy init --home {home.path} (creates a missing CA)")
        return
    r.ok(f"CA {ca.cert_path} (SHA-256 {ca.fingerprint_sha256[:23]}...)")
    ours = ssl.PEM_cert_to_DER_cert(ca.cert_path.read_text())
    try:
        store = system_ca_file(home)
        trusted = ours in _pem_blocks(store.read_bytes())
    except (VaultproxyError, OSError):
        store, trusted = Path("?"), False
    if trusted:
        r.ok(f"this machine's trust store ({store}) holds the CA")
    else:
        r.warn(f"this machine's trust store ({store}) does not hold the CA: clients that do "
               "not read SSL_CERT_FILE / NODE_EXTRA_CA_CERTS fail with curl 60 / "
               "'certificate verify failed'",
               "run agents with `vaultproxy exec` (sets the bundle variables), or trust it "
               f"system-wide: ca/trust.sh {ca.cert_path} (see ca/README.md)")


def _proxy(home: Home, r: Report) -> dict[str, Any] | None:
    try:
        status, health = call(home, "GET", "/v1/health")
    except NotRunning:
        r.warn(f"no proxy running for {home.path}", f"vaultproxy run --home {home.path}")
        return None
    except VaultproxyError as e:
        r.fail(f"the proxy does not answer: {e}", f"vaultproxy stop; vaultproxy run --home "
               f"{home.path}")
        return None
    if health.get("locked"):
        r.fail("the running proxy is LOCKED: intercepted hosts answer 503 locked",
               "vaultproxy unlock")
    else:
        r.ok(f"proxy running, unlocked, {health.get('services')} service(s)")
    for problem in health.get("problems") or []:
        r.fail(f"proxy degraded: {problem}", "see docs/operator/RUNBOOK.md")
    return dict(health)


def _services(home: Home, r: Report) -> None:
    from vaultproxy.config.load import load_config
    from vaultproxy.errors import ConfigError

    try:
        cfg = load_config(home.services)
    except (ConfigError, VaultproxyError):
        return
    for s in cfg.services:
        host = s.hosts[0]
        target = s.connect_to or f"{host}:443"
        dial, _, port = target.rpartition(":")
        dial = dial.strip("[]")
        try:
            infos = socket.getaddrinfo(dial, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:
            r.fail(f"service {s.name}: DNS for {dial} failed ({e})",
                   "check the host name in services.toml, this machine's DNS, or set "
                   "connect_to = \"IP:PORT\"")
            continue
        ip, port_no = infos[0][4][:2]
        _tls(home, r, s, host, (str(ip), int(port_no)))


def _tls(home: Home, r: Report, s: Any, host: str, addr: tuple[str, int]) -> None:
    from vaultproxy.ca.bundle import trust_with

    try:
        trust = trust_with(home, s.ca_cert, s.name)
        ctx = ssl.create_default_context(cafile=str(trust))
        if s.insecure_tls:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(addr, timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as e:
        r.fail(f"service {s.name}: upstream TLS for {host} at {addr[0]}:{addr[1]} is not "
               f"trusted ({e.verify_message})",
               "set ca_cert = \"FILE\" (the upstream's CA, relative to the home) in its "
               "[[service]]; curl -v shows who signed it")
    except (OSError, VaultproxyError) as e:
        r.fail(f"service {s.name}: cannot reach {host} at {addr[0]}:{addr[1]} ({e})",
               "check connect_to / the network; requests answer 502 upstream_unreachable")
    else:
        r.ok(f"service {s.name}: {host} resolves and its TLS verifies")


def _bwrap(r: Report) -> None:
    from vaultproxy.sandbox import bwrap

    try:
        path = bwrap.find()
        bwrap.probe(path, share_net=False, disable_userns=bwrap.has_disable_userns(path))
    except VaultproxyError as e:
        r.warn(f"isolation unavailable: {str(e).split('. ')[0]}",
               "apt install bubblewrap (and enable user namespaces); until then only "
               "`vaultproxy exec --no-isolate` runs agents")
    else:
        r.ok(f"bubblewrap works ({path}): `vaultproxy exec` isolates agents")


def _agent_env(home: Home, r: Report, health: dict[str, Any] | None) -> None:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if not proxy:
        r.warn("this shell has no HTTPS_PROXY: an agent started here bypasses vaultproxy",
               f"eval \"$(vaultproxy env --home {home.path})\", or start agents with "
               "`vaultproxy exec -- CMD`")
        return
    run = _read_run(home)
    url = run.get("proxy_url")
    if url and url.split("://")[-1] not in proxy:
        r.fail(f"HTTPS_PROXY={_no_userinfo(proxy)} is not the running proxy ({url})",
               f"eval \"$(vaultproxy env --home {home.path})\" again")
    else:
        r.ok(f"HTTPS_PROXY={_no_userinfo(proxy)}")
    bundle = os.environ.get("SSL_CERT_FILE")
    if not bundle or not Path(bundle).is_file():
        r.warn("SSL_CERT_FILE is not set (or missing): Python/curl agents may not trust the "
               "CA", f"eval \"$(vaultproxy env --home {home.path})\"")


def _no_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rsplit("@", 1)[-1] if sep else url.rsplit("@", 1)[-1]


def _read_run(home: Home) -> dict[str, Any]:
    from vaultproxy.cli.control import _run_json

    return _run_json(home)


def cmd_doctor(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    r = Report()
    if _home(home, r):
        _ca(home, r)
        health = _proxy(home, r)
        _services(home, r)
    else:
        health = None
    if shutil.which("bwrap") or os.uname().sysname == "Linux":
        _bwrap(r)
    _agent_env(home, r, health)
    sys.stdout.write("\n".join(r.lines) + "\n")
    sys.stdout.write(f"{r.failed} problem(s)\n" if r.failed else "no problems found\n")
    return 1 if r.failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check home, CA, proxy, upstreams, sandbox, agent env",
                       description="Check the home, the CA (and whether this machine trusts "
                       "it), the running proxy, each service's DNS and upstream TLS, "
                       "bubblewrap and this shell's agent environment. Every failure names "
                       "its fix. Exit 1 when something failed.")
    add_home(p)
    p.set_defaults(func=cmd_doctor)
