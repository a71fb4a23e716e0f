"""`vaultproxy exec` isolation (SPEC §7, SECURITY.md §3), with real bubblewrap, a real proxy
and a real TLS upstream.

The same probe (tests/security/isolation_probe.py) tries every way around the proxy: the
home's files (admin token, keystore, CA key, a password file kept there, run.json),
admin.sock, the proxy's /proc/PID/{environ,mem}, unmounting the tmpfs that hides the home,
writing into vaultproxy's own code, a same-uid Unix socket server outside (as tmux or
systemd --user would be), and a direct connection to the upstream. Isolated, all
of it fails while a request to a registered service through the proxy gets its secret; the
negative twin (``--no-isolate``) reaches all of it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, REPO, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from vaultproxy.sandbox import bwrap
from vaultproxy.sandbox.runtimes import node_ignores_proxy, node_version

pytestmark = [pytest.mark.security, pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (CI installs it)")]

PROBE = Path(__file__).with_name("isolation_probe.py")
URL = "https://openai.api.test/v1/models"
PLACEHOLDER = "__vault.openai__"
AS_ROOT = os.geteuid() == 0
ATTACKS = ("admin_token", "keystore", "ca_key", "password_file", "run_json", "admin_sock",
           "proxy_environ", "proxy_mem", "umount_and_read", "plant_code", "host_socket",
           "direct_upstream")


@dataclass
class Setup:
    proxy: ProxyProcess
    upstream: Upstream
    secret: str
    token_file: Path
    token: str
    host_socket: str

    @property
    def home(self) -> Path:
        return self.proxy.home.path

    def exec(self, *cmd: str, flags: tuple[str, ...] = (), env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vaultproxy", "exec", "--home", str(self.home), *flags,
             "--", *cmd],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**os.environ, **(env or {})},
        )

    def probe(self, *flags: str) -> dict[str, str]:
        r = self.exec(sys.executable, str(PROBE), str(self.home), str(self.proxy.proc.pid),
                      str(self.upstream.port), self.host_socket, flags=flags)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def _host_service(path: Path) -> socket.socket:
    """A same-uid Unix socket server outside the sandbox that greets every client."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    threading.Thread(target=serve, daemon=True).start()
    return server


# The sandbox has a private /tmp, so a home under pytest's /tmp would be out of sight for
# the wrong reason: these homes live where the sandbox does see them (read-only).
VISIBLE_TMP = "/var/tmp"  # noqa: S108 - the test's own mkdtemp under it


def visible_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=VISIBLE_TMP))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    base = visible_dir("vp-isolation-")
    service = _host_service(base / "host-service.sock")
    canary.watch(base)
    upstream = Upstream(base).start()
    secret = make_canary()
    home = ProxyHome.create(
        base, service_block("openai", "placeholder", "bearer", upstream.port,
                            env='"OPENAI_API_KEY"'),
        {"openai": secret}, files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    kept = home.path / "master-password"  # "a password file kept in the home"
    kept.write_text(PASSWORD)
    os.chmod(kept, 0o600)
    pw = ("--password-file", str(home.password_file))
    token = cli(home.path, "agent", "add", "bot", "--services", "openai", *pw).stdout.strip()
    token_file = base / "bot.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    proxy = ProxyProcess.start(home, args=("--workers", "1"))
    yield Setup(proxy, upstream, secret, token_file, token, str(base / "host-service.sock"))
    proxy.stop()
    upstream.stop()
    service.close()
    shutil.rmtree(base, ignore_errors=True)


def test_isolated_agent_reaches_nothing_but_the_proxy(setup: Setup) -> None:
    got = setup.probe()
    for attack in ATTACKS:
        assert got[attack].startswith("blocked"), (attack, got[attack])
    # The tmpfs over the home could not be unmounted: the seccomp allowlist has no umount2
    # (ENOSYS); without the filter, no capability survived, even as root (EPERM; the twin
    # test_without_the_capability_drop_root_unmounts_its_way_back shows what that prevents).
    assert int(got["umount_errno"]) == errno.ENOSYS
    assert got["uid"] == str(os.getuid())  # same uid inside: isolation is not a uid change


def test_no_isolate_twin_reaches_everything(setup: Setup) -> None:
    got = setup.probe("--no-isolate")
    reachable = list(ATTACKS)
    if not AS_ROOT:  # the proxy is non-dumpable: only root reads its /proc files
        reachable = [a for a in reachable if a not in ("proxy_environ", "proxy_mem")]
    for attack in reachable:
        assert got[attack] == "reached", (attack, got[attack])


def _curl(setup: Setup, *flags: str) -> subprocess.CompletedProcess[str]:
    return setup.exec("sh", "-c", f'curl -sS --fail -H "Authorization: Bearer $OPENAI_API_KEY" '
                      f'{URL}', flags=flags)


@pytest.mark.parametrize("flags", [(), ("--share-net",)], ids=["isolated", "share-net"])
def test_registered_service_through_the_proxy_gets_the_secret(
    setup: Setup, flags: tuple[str, ...]
) -> None:
    before = len(setup.upstream.received)
    r = _curl(setup, *flags)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert len(setup.upstream.received) == before + 1
    assert setup.upstream.received[-1].header("authorization") == f"Bearer {setup.secret}"
    assert ("SECURITY: --share-net" in r.stderr) is bool(flags)


def test_share_net_keeps_the_host_network_but_hides_the_home(setup: Setup) -> None:
    got = setup.probe("--share-net")
    assert got["direct_upstream"] == "reached"  # what --share-net is for (local MCP servers)
    for attack in ATTACKS:
        if attack != "direct_upstream":
            assert got[attack].startswith("blocked"), (attack, got[attack])


def test_proxy_socket_serves_two_workers(tmp_path: Path, canary_watch: object) -> None:
    canary_watch(tmp_path)  # type: ignore[operator]
    upstream = Upstream(tmp_path).start()
    secret = make_canary()
    home = ProxyHome.create(
        tmp_path, service_block("openai", "placeholder", "bearer", upstream.port),
        {"openai": secret}, files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    proxy = ProxyProcess.start(home, args=("--workers", "2"))
    try:
        assert len(proxy.extra["worker_pids"]) == 1  # type: ignore[arg-type]
        script = " && ".join([f"curl -sS --fail -H 'Authorization: Bearer {PLACEHOLDER}' {URL}"
                              " >/dev/null"] * 6)
        r = subprocess.run(
            [sys.executable, "-m", "vaultproxy", "exec", "--home", str(home.path), "--",
             "sh", "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert len(upstream.received) == 6
        assert all(rec.header("authorization") == f"Bearer {secret}"
                   for rec in upstream.received)
    finally:
        proxy.stop()
        upstream.stop()


def _processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, cmdline, environ) of every process we may read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        yield int(entry), cmdline, environ


def test_agent_identity_under_isolation_token_only_in_the_agents_environment(
    setup: Setup,
) -> None:
    before = len(setup.upstream.received)
    r = setup.exec("sh", "-c", f'curl -sS --fail -H "Authorization: Bearer $OPENAI_API_KEY" '
                   f'{URL} >/dev/null && echo "$HTTPS_PROXY" | cut -d@ -f1 | cut -d: -f2',
                   flags=("--agent", "bot", "--token-file", str(setup.token_file)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "//bot"  # the agent's own proxy URL carries its name (and token)
    assert len(setup.upstream.received) == before + 1
    records: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while not records and time.monotonic() < deadline:  # the audit is flushed in background
        records = [a for a in setup.proxy.audit() if a.get("agent") == "bot"]
        time.sleep(0.05)
    assert records and records[-1]["service"] == "openai"
    # While the agent runs: its token is in no process's argv, and in the environment of
    # neither `vaultproxy exec`, bubblewrap nor the sandbox's first process.
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultproxy", "exec", "--home", str(setup.home), "--agent",
         "bot", "--token-file", str(setup.token_file), "--", "sh", "-c", "echo ready; read x"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        token = setup.token.encode()
        ours = 0
        for pid, cmdline, environ in _processes():
            assert token not in cmdline, cmdline.replace(token, b"<token>")
            if b"vaultproxy" in cmdline or b"bwrap" in cmdline:
                ours += 1
                assert token not in environ, (pid, cmdline)
        assert ours >= 3  # exec, bwrap (2 processes: monitor and the namespace's init), inner
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


NODE_FETCH = """
fetch(process.argv[1], {headers: {authorization: "Bearer " + process.env.OPENAI_API_KEY}})
  .then(r => console.log("status", r.status))
  .catch(e => console.log("error", (e.cause && e.cause.code) || e.message));
"""


def _node20() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed (CI installs nodejs)")
    version = node_version(node)
    if version is None or not node_ignores_proxy(version):
        pytest.skip("this node honours NODE_USE_ENV_PROXY; the test is about one that does not")
    return node


def test_node20_fetch_fails_to_connect_instead_of_going_around(setup: Setup) -> None:
    node = _node20()
    target = f"https://127.0.0.1:{setup.upstream.port}/v1/models"
    before = len(setup.upstream.received)
    r = setup.exec(node, "-e", NODE_FETCH, target)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "error ECONNREFUSED"
    assert len(setup.upstream.received) == before  # nothing reached the upstream
    assert "ignores HTTPS_PROXY" in r.stderr  # exec warned before starting it
    # Negative twin: without the sandbox, Node 20 talks to the upstream directly, sending the
    # placeholder (and would send whatever else it holds) around the proxy.
    r = setup.exec(node, "-e", NODE_FETCH, target,
                   flags=("--no-isolate", "--keep-env", "NODE_TLS_REJECT_UNAUTHORIZED"),
                   env={"NODE_TLS_REJECT_UNAUTHORIZED": "0"})
    assert r.stdout.strip() == "status 200", r.stdout + r.stderr
    assert setup.upstream.received[-1].header("authorization") == f"Bearer {PLACEHOLDER}"


@pytest.mark.skipif(not AS_ROOT, reason="the capability drop matters for root (CI runs as root)")
def test_without_the_capability_drop_root_unmounts_its_way_back() -> None:
    """What --unshare-user/--cap-drop ALL prevent: the same sandbox without them, started as
    root, unmounts the tmpfs and reads the hidden file (negative twin of the umount probe)."""
    tmp_path = visible_dir("vp-umount-")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "secret").write_text("hidden-value")
    files = tmp_path / "files"
    files.mkdir()
    layout = bwrap.Layout(hide_dirs=(str(hidden),), hide_files=(), read_only=(),
                          files_dir=str(files))
    script = f"umount {hidden} 2>/dev/null; cat {hidden}/secret"
    results = {}
    for drop in (True, False):
        argv = [bwrap.find(), *bwrap.namespace_args(share_net=False, drop_caps=drop),
                *bwrap.mount_args(layout), "--", "sh", "-c", script]
        results[drop] = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    shutil.rmtree(tmp_path)
    assert results[True].returncode != 0 and "hidden-value" not in results[True].stdout
    assert results[False].stdout == "hidden-value"


TERMINAL_INJECTION = """
import errno, fcntl, termios
for name, request in (("TIOCSTI", termios.TIOCSTI), ("TIOCLINUX", 0x541C)):
    try:
        fcntl.ioctl(0, request, b"x" * 64)
    except OSError as e:
        print(name, errno.errorcode[e.errno])
"""


def test_terminal_injection_ioctls_are_refused_by_the_filter(setup: Setup) -> None:
    """TIOCSTI/TIOCLINUX never reach the kernel's tty code in the sandbox (EPERM from the
    seccomp filter); without it the same call gets as far as the tty layer (ENOTTY on a
    pipe), which on a real terminal would type into your shell."""
    isolated = setup.exec(sys.executable, "-c", TERMINAL_INJECTION)
    assert isolated.stdout.split() == ["TIOCSTI", "EPERM", "TIOCLINUX", "EPERM"]
    plain = setup.exec(sys.executable, "-c", TERMINAL_INJECTION, flags=("--no-isolate",))
    assert plain.stdout.split() == ["TIOCSTI", "ENOTTY", "TIOCLINUX", "ENOTTY"]


def test_missing_bubblewrap_exits_2_naming_the_package_and_the_flag_that_works(
    setup: Setup
) -> None:
    r = setup.exec("true", env={"PATH": "/nonexistent"})
    assert r.returncode == 2
    for word in ("bubblewrap", "--no-isolate"):
        assert word in r.stderr
    # --share-net is isolation too: it is not offered as a way out (SPEC §7).
    assert "run with --no-isolate" in r.stderr and "--share-net needs bubblewrap too" in r.stderr
    assert "--share-net (keeps" not in r.stderr
    assert "Traceback" not in r.stderr


def test_proxy_without_a_unix_socket_is_refused_not_run_unisolated(tmp_path: Path) -> None:
    """A proxy that offers no proxy.sock (mitmdump-hosted): exit 2, never a silent plain run."""
    home = tmp_path / "h"
    pw = tmp_path / "pw"
    pw.write_text("pw-for-no-socket")
    cli(home, "init", "--password-file", str(pw))
    (home / "run.json").write_text(json.dumps({"pid": os.getpid(),
                                               "proxy_url": "http://127.0.0.1:9"}))
    marker = tmp_path / "ran"
    r = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "exec", "--home", str(home), "--", "touch",
         str(marker)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "no proxy.sock" in r.stderr
    assert "--share-net" in r.stderr and "--no-isolate" in r.stderr
    assert not marker.exists()


def test_ctrl_c_reaches_the_agent_and_exec_ends_like_it(setup: Setup) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) kills the agent;
    exec and bubblewrap survive it and then end by the same signal."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultproxy", "exec", "--home", str(setup.home), "--",
         "sh", "-c", "echo ready; exec sleep 60"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, process_group=0)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)  # let `exec sleep` replace the shell (not a timed assertion)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(30) == -signal.SIGINT
    proc.stdout.close()
