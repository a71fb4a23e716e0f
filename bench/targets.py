# ruff: noqa: E501  (long table labels and config templates)
"""The things measured side by side. Each target knows how to start and stop itself, which URL
the intercepted workloads use, which headers the agent sends, and what the upstream must see.

  direct       hey -> nginx
  mitmdump     bare `mitmdump -q` (default addon chain), upstream verified against the nginx CA
  squid        squid-openssl ssl-bump, injecting an Authorization header (when installed)
  vp-*         `vaultproxy run` with services connect_to = nginx: placeholder / host_inject

Passthrough: nginx's second port is never intercepted (mitmdump --ignore-hosts, squid splice,
vaultproxy: an unregistered host that [proxy] passthrough_allow lets through)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from bench.upstream import Nginx, free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class Target:
    name: str
    label: str
    nginx: Nginx
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    proxy: str | None = None
    headers: tuple[str, ...] = ()
    expect_auth: str = ""  # what nginx must see in Authorization (the injection check)
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.nginx.port}"

    @property
    def passthrough_base(self) -> str:
        return f"https://127.0.0.1:{self.nginx.pt_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class Direct(Target):
    pass


class Mitmdump(Target):
    def start(self) -> None:
        port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(VENV_BIN / "mitmdump"),
            "-q",
            "--listen-host", "127.0.0.1",
            "--listen-port", str(port),
            "--set", f"confdir={self.workdir / 'confdir'}",
            "--set", f"ssl_verify_upstream_trusted_ca={self.nginx.ca_file}",
            "--ignore-hosts", rf"^127\.0\.0\.1:{self.nginx.pt_port}$",
        ]  # fmt: skip
        log = open(self.workdir / "mitmdump.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        wait_port(port, self.proc, "mitmdump", timeout=30)
        self.proxy = f"http://127.0.0.1:{port}"


SQUID_CONF = """\
http_port 127.0.0.1:{port} ssl-bump tls-cert={d}/squid-ca.pem generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s {d}/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl passthrough_port port {pt_port}
ssl_bump splice passthrough_port
ssl_bump bump all
tls_outgoing_options cafile={d}/upstream-ca.pem
# hey sends "Host: squid.bench.test" (no port: it is also the SNI), so squid would dial :443.
# Bump client-first and route every bumped request to nginx (like vaultproxy connect_to).
cache_peer squid.bench.test parent {port_up} 0 no-query no-digest originserver tls tls-cafile={d}/upstream-ca.pem name=nginx
acl CONNECT method CONNECT
cache_peer_access nginx deny CONNECT
cache_peer_access nginx allow all
never_direct deny CONNECT
never_direct allow all
http_access allow localhost
http_access deny all
request_header_access Authorization deny all
request_header_add Authorization "Bearer {secret}" all
cache deny all
cache_mem 8 MB
memory_pools off
access_log none
cache_store_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
shutdown_lifetime 1 seconds
pinger_enable off
hosts_file {d}/hosts
"""


def squid_binary() -> str | None:
    for p in (shutil.which("squid"), "/usr/sbin/squid"):
        if p and os.path.exists(p) and os.path.exists("/usr/lib/squid/security_file_certgen"):
            return p
    return None


class Squid(Target):
    @property
    def base(self) -> str:
        return f"https://squid.bench.test:{self.nginx.port}"

    def start(self) -> None:
        binary = squid_binary()
        if binary is None:
            raise RuntimeError("squid-openssl is not installed")
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        (d / "squid-ca.pem").write_bytes(ca.private_key_pem.bytes() + ca.cert_pem.bytes())
        shutil.copy(self.nginx.ca_file, d / "upstream-ca.pem")
        secret = f"vpbench_{secrets.token_hex(8)}"
        self.expect_auth = f"Bearer {secret}"
        (d / "hosts").write_text("127.0.0.1 squid.bench.test\n")  # squid matches no IP SANs
        port = free_port()
        conf = d / "squid.conf"
        conf.write_text(
            SQUID_CONF.format(
                d=d, port=port, port_up=self.nginx.port, pt_port=self.nginx.pt_port, secret=secret
            )
        )
        shutil.rmtree(d / "ssl_db", ignore_errors=True)  # certgen -c refuses an existing db
        subprocess.run(
            ["/usr/lib/squid/security_file_certgen", "-c", "-s", str(d / "ssl_db"), "-M", "16MB"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        if os.geteuid() == 0:  # squid drops to the `proxy` user
            for p in [d, *d.rglob("*")]:
                shutil.chown(p, "proxy", "proxy")
        log = open(d / "squid.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "-N", "-f", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_port(port, self.proc, "squid", timeout=30)
        self.proxy = f"http://127.0.0.1:{port}"
        self.notes.append("squid: ssl-bump, strips Authorization then adds the real one")


def services_toml(nginx: Nginx) -> str:
    def block(name: str, mode: str) -> str:
        return (
            f'[[service]]\nname = "{name}"\nhosts = ["{name}.bench.test"]\nmode = "{mode}"\n'
            f'auth = "bearer"\nconnect_to = "127.0.0.1:{nginx.port}"\nallow_loopback = true\n'
            f'ca_cert = "upstream-ca.pem"\n\n'
        )

    return (
        f'[proxy]\npassthrough_allow = ["127.0.0.1:{nginx.pt_port}"]\n\n'
        + block("ph", "placeholder")
        + block("hi", "host_inject")
    )


@dataclass
class VaultproxyHome:
    path: Path
    password_file: Path
    secrets: dict[str, str]

    @classmethod
    def create(cls, base: Path, nginx: Nginx) -> VaultproxyHome:
        sys.path.insert(0, str(REPO))
        from tests.harness.proxy import ProxyHome  # the real CLI: init, secret set

        base.mkdir(parents=True, exist_ok=True)
        values = {n: f"vpbench_{secrets.token_hex(8)}" for n in ("ph", "hi")}
        home = ProxyHome.create(
            base,
            services_toml(nginx),
            dict(values),
            files={"upstream-ca.pem": nginx.ca_file.read_bytes()},
        )
        return cls(home.path, home.password_file, values)


class Vaultproxy(Target):
    home: VaultproxyHome | None = None
    service: str = "hi"
    profile_to: Path | None = None  # run under cProfile, stats written here at exit
    workers: int = 1
    worker_pids: tuple[int, ...] = ()  # from run.json, besides proc (worker 0)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *self.worker_pids] if self.proc is not None else []

    @property
    def base(self) -> str:
        return f"https://{self.service}.bench.test"

    def start(self) -> None:
        assert self.home is not None
        run_json = self.home.path / "run.json"
        run_json.unlink(missing_ok=True)
        prefix = [sys.executable]
        if self.profile_to is not None:
            prefix += ["-m", "cProfile", "-o", str(self.profile_to)]
        cmd = [
            *prefix, "-m", "vaultproxy", "run", "--home", str(self.home.path),
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--dashboard-listen", "",
            "--password-file", str(self.home.password_file),
            "--workers", str(self.workers),
        ]  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"vaultproxy-{self.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vaultproxy run exited {self.proc.returncode}; see {log.name}")
            try:
                data = json.loads(run_json.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = {}
            if data.get("pid") == self.proc.pid:
                self.proxy = data["proxy_url"]
                self.worker_pids = tuple(data.get("worker_pids", []))
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("vaultproxy run did not write run.json within 60 s")
        secret = self.home.secrets[self.service]
        self.expect_auth = f"Bearer {secret}"
        if self.service == "ph":
            self.headers = ("Authorization: Bearer __vault.ph__",)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, wait=30)
            self.proc = None
