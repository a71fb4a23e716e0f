"""The allowlist sandbox against an agent trying to get out (SPEC §7, SECURITY.md §3), run as
root AND as a non-root operator (a user made with ``useradd``; the proxy and ``exec`` both
run as that user, as a real operator would).

Each probe (tests/security/escape_probe.py) has its negative twin under ``--no-isolate``
(or, for what ``--no-isolate`` also refuses, the same probe without ``vaultproxy exec``):
- io_uring ``IORING_OP_SOCKET(AF_UNIX)`` + connect to a same-uid server outside;
- ``/proc/sys/kernel/core_pattern`` written as root (the value it has, so nothing changes);
- a launcher in ``~/.local/bin`` and a shell rc file opened for writing;
- inherited secret and token variables (a stored secret, ``GITHUB_TOKEN``, ``AWS_*``);
- credential files (``~/.aws``, ``~/.netrc``, ``~/.ssh``, ``~/.config/gh``), the runtime
  directory, the home, and the password file, directly, through a bind-mount alias and
  through a hard link;
- an inherited file descriptor.
And the sandbox stays usable as a non-root user: curl, requests, httpx, git, node's fetch
with the documented preload, pip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream, default_handler
from tests.integration.conftest import service_block

pytestmark = [pytest.mark.security, pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (CI installs it)")]

PROBE = Path(__file__).with_name("escape_probe.py")
AS_ROOT = os.geteuid() == 0
USER = "vpescape"
PLACEHOLDER = "__vault.openai__"
VISIBLE_TMP = "/var/tmp"  # noqa: S108 - outside the sandbox's private /tmp, so visible in it
GIT_REFS = b"1111111111111111111111111111111111111111\trefs/heads/main\n"
CREDENTIAL_FILES = (".aws/credentials", ".netrc", ".ssh/id_ed25519", ".config/gh/hosts.yml")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _wheel() -> bytes:
    """A minimal valid wheel for ``pip download`` from the test index."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tinypkg/__init__.py", "")
        z.writestr("tinypkg-1.0.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        z.writestr("tinypkg-1.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr("tinypkg-1.0.dist-info/RECORD", "")
    return buf.getvalue()


WHEEL = _wheel()
WHEEL_NAME = "tinypkg-1.0-py3-none-any.whl"


def handler(rec: Received) -> Reply:
    """JSON echo, plus a dumb-HTTP git remote and a PEP 503 index for the usability tests."""
    if rec.path.endswith("/info/refs"):
        return 200, [(b"content-type", b"text/plain")], [GIT_REFS]
    if rec.path.rstrip("/") == "/simple/tinypkg":
        sha = hashlib.sha256(WHEEL).hexdigest()
        html = f'<a href="/files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>'.encode()
        return 200, [(b"content-type", b"text/html")], [html]
    if rec.path == f"/files/{WHEEL_NAME}":
        return 200, [(b"content-type", b"application/octet-stream")], [WHEEL]
    return default_handler(rec)


@dataclass
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def escape_user() -> Iterator[User | None]:
    """A non-root operator: created with useradd when running as root (None otherwise:
    then the suite's "root" half cannot run, and its "user" half is the current user).
    /root stays unlistable; it gets o+x only, for this test's Python, and is restored."""
    if not AS_ROOT:
        yield None
        return
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/bin/sh", USER], check=True)
    entry = pwd.getpwnam(USER)
    blocked = [p for p in Path(sys.base_prefix).parents if p != Path("/")
               and not os.stat(p).st_mode & stat.S_IXOTH]
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in blocked}
    for p, mode in modes.items():
        os.chmod(p, mode | stat.S_IXOTH)
    try:
        yield User(USER, entry.pw_uid, entry.pw_gid)
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)


@dataclass
class World:
    who: str
    base: Path
    user_home: Path
    proxy: ProxyProcess
    upstream: Upstream
    secret: str  # openai's (placeholder mode)
    other: str  # gh's (host_inject: no placeholder may stand for it)
    host_socket: str
    password_link: Path
    user: User | None
    aliases: dict[str, Path] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.proxy.home.path

    def _run_as(self) -> dict[str, object]:
        if self.user is None or self.who == "root":
            return {}
        return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.user_home),
                "LANG": "C.UTF-8", "VAULTPROXY_PASSWORD_FILE": str(self.password_link),
                "XDG_RUNTIME_DIR": str(self.base / "runtime"), **(extra or {})}

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                              env=self.env(env), pass_fds=pass_fds, **self._run_as())  # type: ignore[call-overload]

    def exec(self, *cmd: str, flags: tuple[str, ...] = (), env: dict[str, str] | None = None,
             pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "vaultproxy", "exec", "--home", str(self.home),
                         *flags, "--", *cmd], env, pass_fds)

    def spec(self) -> dict[str, object]:
        reads = [str(self.user_home / f) for f in CREDENTIAL_FILES]
        reads += [str(self.home / "admin-token"), str(self.password_link),
                  str(self.password_link.resolve()), str(self.base / "runtime" / "bus")]
        reads += [str(a) for a in self.aliases.values()]
        return {"host_socket": self.host_socket, "reads": reads,
                "writes": [str(self.user_home / ".local/bin/vaultproxy"),
                           str(self.user_home / ".bashrc")],
                "env": ["OPENAI_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                        "AWS_ACCESS_KEY_ID", "GH_KEPT", "PLAIN_KEPT"]}

    def probe(self, *flags: str, env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = (), direct: bool = False) -> dict[str, object]:
        argv = [sys.executable, str(PROBE), json.dumps(self.spec())]
        r = self.run(argv, env, pass_fds) if direct else self.exec(*argv, flags=flags, env=env,
                                                                     pass_fds=pass_fds)
        assert r.returncode == 0, r.stderr
        got = dict(json.loads(r.stdout.strip().splitlines()[-1]))
        got["stderr"] = r.stderr
        return got


def _host_service(path: Path) -> socket.socket:
    """A server outside the sandbox that greets every client (what tmux would run)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o666)  # the non-root agent may connect: only the sandbox stands between
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


def _user_home(base: Path) -> Path:
    """A stand-in for the operator's home: credential stores, a launcher, an rc file."""
    home = base / "user"
    for rel in CREDENTIAL_FILES:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(f"fake credential for {rel}\n")
    (home / ".local/bin").mkdir(parents=True)
    (home / ".local/bin/vaultproxy").write_text("#!/bin/sh\nexec python3 -m vaultproxy \"$@\"\n")
    (home / ".bashrc").write_text("# rc\n")
    (home / "notes").write_text("private notes\n")
    return home


def _mount_bind(src: Path, dest: Path) -> bool:
    dest.mkdir()
    return subprocess.run(["mount", "--bind", str(src), str(dest)],
                          capture_output=True, check=False).returncode == 0


WHO = ["root", "user"]


@pytest.fixture(scope="module", params=WHO)
def world(request: pytest.FixtureRequest, escape_user: User | None) -> Iterator[World]:
    who = str(request.param)
    if who == "root" and not AS_ROOT:
        pytest.skip("the root half needs root (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix=f"vp-escape-{who}-", dir=VISIBLE_TMP))
    os.chmod(base, 0o755)
    upstream = Upstream(base, handler=handler).start()
    secret, other = make_canary(), make_canary()
    (base / "shared-out").mkdir()
    (base / "runtime").mkdir(mode=0o700)  # $XDG_RUNTIME_DIR: D-Bus, gpg-agent sockets live here
    (base / "runtime" / "bus").write_text("stands for a session bus\n")
    toml = (f'[agent]\nkeep_env = ["CONF_KEPT"]\nwrite = ["{base}/shared-out"]\n'
            'hide = ["~/notes"]\n\n')
    toml += service_block("openai", "placeholder", "bearer", upstream.port,
                         env='"OPENAI_API_KEY"')
    toml += service_block("gh", "host_inject", "bearer", upstream.port)
    proxy_home = ProxyHome.create(base, toml, {"openai": secret, "gh": other},
                                  files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    password_link = base / "pw-link"
    password_link.symlink_to(proxy_home.password_file)
    user_home = _user_home(base)
    service = _host_service(base / "host.sock")
    user = escape_user if who == "user" else None
    if user is not None:
        subprocess.run(["chown", "-R", "--no-dereference", f"{user.uid}:{user.gid}",
                        str(base)], check=True)
    aliases: dict[str, Path] = {}
    mounted: list[Path] = []
    if AS_ROOT:  # bind-mount aliases of a credential store and of the home
        for name, src, leaf in (("aws", user_home / ".aws", "credentials"),
                                ("home", proxy_home.path, "admin-token")):
            dest = base / f"alias-{name}"
            if _mount_bind(src, dest):
                mounted.append(dest)
                aliases[name] = dest / leaf
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(user_home), "LANG": "C.UTF-8"}
    proxy = ProxyProcess.start(proxy_home, args=("--workers", "1"),
                               user=(user.uid, user.gid) if user else None, env=env)
    w = World(who, base, user_home, proxy, upstream, secret, other, str(base / "host.sock"),
              password_link, user, aliases)
    try:
        yield w
    finally:
        proxy.stop()
        upstream.stop()
        service.close()
        canary.scan_path(base)  # logs, audit, the probes' files: before they are removed
        for dest in mounted:
            subprocess.run(["umount", "-l", str(dest)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _reached(got: dict[str, object]) -> list[str]:
    return [k for k, v in got.items() if v == "reached"]


def _attacks(w: World) -> list[str]:
    spec = w.spec()
    out = ["uring_socket"]
    out += [f"write:{p}" for p in spec["writes"]]  # type: ignore[attr-defined]
    out += [f"read:{p}" for p in spec["reads"]]  # type: ignore[attr-defined]
    if w.who == "root":
        out.append("proc_sys")
    return out


def _core_pattern() -> str:
    return Path("/proc/sys/kernel/core_pattern").read_text()


def test_escape_probes_are_refused_inside_and_reach_outside(world: World) -> None:
    before = _core_pattern()
    with open(world.user_home / ".netrc", "rb") as leaked:  # an fd the operator's shell had
        os.set_inheritable(leaked.fileno(), True)
        fds = (leaked.fileno(),)
        inside = world.probe(pass_fds=fds)
        outside = world.probe("--no-isolate", pass_fds=fds)
    assert _core_pattern() == before  # the twin wrote the same value back
    attacks = _attacks(world)
    assert len(attacks) >= 9 + len(world.aliases)
    for attack in attacks:
        assert str(inside[attack]).startswith("blocked"), (attack, inside[attack])
        assert outside[attack] == "reached", (attack, outside[attack])
    assert "38" in str(inside["uring_socket"])  # ENOSYS: as on a kernel without io_uring
    assert inside["fds"] == [] and fds[0] in outside["fds"]  # type: ignore[operator]
    assert inside["uid"] == outside["uid"] == (world.user.uid if world.user else 0)


def test_share_net_leaks_no_descriptor_and_keeps_the_filter(world: World) -> None:
    got = world.probe("--share-net")
    assert got["fds"] == []
    assert str(got["uring_socket"]).startswith("blocked")
    assert not [a for a in _reached(got) if a.startswith(("write:", "read:"))]


def _secret_env(w: World) -> dict[str, str]:
    return {"OPENAI_KEY": w.secret, "GITHUB_TOKEN": make_canary(),
            "AWS_SECRET_ACCESS_KEY": make_canary(), "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0000",
            "GH_KEPT": f"token {w.other}", "PLAIN_KEPT": "kept-value"}


@pytest.mark.parametrize("mode", [(), ("--share-net",), ("--no-isolate",)],
                         ids=["isolated", "share-net", "no-isolate"])
def test_inherited_secrets_and_tokens_never_reach_the_agent(
    world: World, mode: tuple[str, ...]
) -> None:
    env = _secret_env(world)
    flags = (*mode, "--keep-env", "GH_KEPT", "--keep-env", "PLAIN_KEPT")
    got = world.probe(*flags, env=env)["env"]
    assert got == {
        "OPENAI_KEY": _digest(PLACEHOLDER),  # a placeholder-mode secret: swapped
        "GITHUB_TOKEN": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_ACCESS_KEY_ID": None,
        "GH_KEPT": None,  # kept, but holds a host_inject secret: dropped
        "PLAIN_KEPT": _digest("kept-value"),
    }
    # Negative twin: the same probe with the same environment, without `vaultproxy exec`.
    direct = world.probe(env=env, direct=True)["env"]
    assert direct["OPENAI_KEY"] == _digest(world.secret)
    assert direct["GITHUB_TOKEN"] == _digest(env["GITHUB_TOKEN"])
    assert direct["GH_KEPT"] == _digest(env["GH_KEPT"])


def test_warnings_name_the_variables_never_the_values(world: World) -> None:
    env = _secret_env(world)
    r = world.exec("true", flags=("--keep-env", "GH_KEPT"), env=env)
    assert r.returncode == 0, r.stderr
    assert "$OPENAI_KEY holds a stored secret: the agent gets its placeholder" in r.stderr
    assert "$GH_KEPT holds a stored secret: not passed" in r.stderr
    assert world.secret not in r.stderr and world.other not in r.stderr


def test_vaultproxy_env_unsets_what_an_agent_may_not_have(world: World) -> None:
    env = _secret_env(world)
    r = world.run([sys.executable, "-m", "vaultproxy", "env", "--home", str(world.home)], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "GH_KEPT", "PLAIN_KEPT"):
        assert f"unset {name};" in lines
    assert f"export OPENAI_KEY='{PLACEHOLDER}';" in lines
    assert "unset PATH;" not in lines and "unset HOME;" not in lines
    assert world.secret not in r.stdout and world.other not in r.stdout


@pytest.mark.parametrize("target", ["netrc", "password_file"])
def test_hard_link_to_a_hidden_file_refuses_to_start(world: World, target: str) -> None:
    hidden = (world.user_home / ".netrc" if target == "netrc"
              else world.proxy.home.password_file)
    link = world.base / f"{target}-link"
    os.link(hidden, link)
    spec_path = str(link)
    try:
        script = f"open({spec_path!r}).read(1) and print('reached')"
        refused = world.exec(sys.executable, "-c", script)
        assert refused.returncode == 2, refused.stderr
        assert str(hidden) in refused.stderr and "hard link" in refused.stderr
        assert "reached" not in refused.stdout
        # Negative twins: without the sandbox, and with that file exposed, the link reads.
        plain = world.exec(sys.executable, "-c", script, flags=("--no-isolate",))
        assert plain.stdout.strip() == "reached", plain.stderr
        exposed = world.exec(sys.executable, "-c", script,
                             flags=("--expose", str(hidden)))
        assert exposed.stdout.strip() == "reached", exposed.stderr
        assert "SECURITY: --expose" in exposed.stderr
    finally:
        link.unlink()


def test_write_flag_opens_one_path(world: World) -> None:
    target = world.user_home / ".local/bin"
    script = f"open({str(target / 'planted')!r}, 'w').close(); print('wrote')"
    assert world.exec(sys.executable, "-c", script).stdout == ""
    r = world.exec(sys.executable, "-c", script, flags=("--write", str(target)))
    assert r.stdout.strip() == "wrote", r.stderr
    (target / "planted").unlink()


# --- usability: real clients inside the default sandbox --------------------------------

URL = "https://openai.api.test/v1/models"
PY_REQUESTS = f"""
import os, requests
r = requests.get({URL!r}, headers={{"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}})
print(r.status_code)
"""
PY_HTTPX = PY_REQUESTS.replace("requests", "httpx")
NODE_PRELOAD = """
import { setGlobalDispatcher, EnvHttpProxyAgent } from "UNDICI";
setGlobalDispatcher(new EnvHttpProxyAgent());
"""
NODE_FETCH = f"""
fetch({URL!r}, {{headers: {{authorization: "Bearer " + process.env.OPENAI_API_KEY}}}})
  .then(r => console.log(r.status)).catch(e => console.log("error", e.cause || e));
"""
UNDICI = Path("/usr/lib/node_modules/npm/node_modules/undici/index.js")


def _injected(w: World, before: int) -> None:
    assert len(w.upstream.received) == before + 1
    assert w.upstream.received[-1].header("authorization") == f"Bearer {w.secret}"


@pytest.mark.parametrize("client", ["curl", "requests", "httpx"])
def test_http_clients_work_inside(world: World, client: str) -> None:
    argv = {
        "curl": ["sh", "-c", 'curl -sS --fail -o /dev/null -w "%{http_code}" '
                 f'-H "Authorization: Bearer $OPENAI_API_KEY" {URL}'],
        "requests": [sys.executable, "-c", PY_REQUESTS],
        "httpx": [sys.executable, "-c", PY_HTTPX],
    }[client]
    before = len(world.upstream.received)
    r = world.exec(*argv)
    assert r.returncode == 0 and r.stdout.strip() == "200", r.stderr
    _injected(world, before)


def test_git_over_https_works_inside(world: World) -> None:
    r = world.exec("git", "ls-remote", "https://openai.api.test/repo.git",
                   env={"GIT_TERMINAL_PROMPT": "0"})
    assert r.returncode == 0, r.stderr
    assert "refs/heads/main" in r.stdout


def test_node_fetch_with_the_documented_preload_works_inside(world: World) -> None:
    node = shutil.which("node")
    if node is None or not UNDICI.exists():
        pytest.skip("node with npm's bundled undici not installed (CI installs nodejs, npm)")
    preload = world.base / "preload.mjs"
    preload.write_text(NODE_PRELOAD.replace("UNDICI", str(UNDICI)))
    os.chmod(preload, 0o644)
    before = len(world.upstream.received)
    r = world.exec(node, "--import", str(preload), "-e", NODE_FETCH)
    assert r.stdout.strip() == "200", r.stdout + r.stderr
    _injected(world, before)


def test_pip_downloads_through_the_proxy_inside(world: World) -> None:
    r = world.exec(sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                   "--disable-pip-version-check", "-d", "/tmp/dl", "--index-url",
                   "https://openai.api.test/simple/", "tinypkg")
    assert r.returncode == 0, r.stdout + r.stderr
    assert WHEEL_NAME in r.stdout


def test_wget_uses_the_generated_wgetrc(world: World) -> None:
    if shutil.which("wget") is None:
        pytest.skip("wget not installed (CI installs it)")
    r = world.exec("wget", "-q", "-O", "-", URL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    # Negative twin: without the wgetrc, wget does not trust the proxy's CA.
    r = world.exec("sh", "-c", f"WGETRC=/dev/null wget -q -O - {URL}")
    assert r.returncode != 0


AGENT_ENV_CALL = """
import json, pathlib, sys, httpx
from vaultproxy.cli.control import call
from vaultproxy.files.home import Home
home = Home(pathlib.Path(sys.argv[1]))
body = json.dumps({"env": json.loads(sys.argv[2])}).encode()
status, data = call(home, "POST", "/v1/agent-env", body)
token = (home.path / "admin-token").read_text().strip()
r = httpx.post(f"http://{sys.argv[3]}/v1/agent-env", content=body, trust_env=False,
               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
print(json.dumps([status, data, r.status_code, r.json()["error"]["code"]]))
"""


def test_agent_env_endpoint_answers_on_admin_sock_only(world: World) -> None:
    """The check names variables, returns only placeholder values, and refuses TCP (a token
    holder gains no "does this hold a secret" oracle)."""
    env = {"A": f"x{world.secret}y", "B": world.other, "C": "plain"}
    r = world.run([sys.executable, "-c", AGENT_ENV_CALL, str(world.home), json.dumps(env),
                   str(world.proxy.extra["admin"])])
    assert r.returncode == 0, r.stderr
    status, data, tcp_status, tcp_code = json.loads(r.stdout)
    assert status == 200 and data == {"swap": {"A": f"x{PLACEHOLDER}y"}, "drop": ["B"]}
    assert (tcp_status, tcp_code) == (403, "admin_socket_only")
    assert world.secret not in r.stdout + r.stderr and world.other not in r.stdout


def test_locked_proxy_passes_only_the_builtin_names(world: World) -> None:
    """When the proxy cannot check (locked), kept names are dropped too, with a warning;
    runs last in the module (it locks the proxy, then unlocks it)."""
    vp = [sys.executable, "-m", "vaultproxy"]
    home = ("--home", str(world.home))
    assert world.run([*vp, "lock", *home]).returncode == 0
    try:
        r = world.exec("sh", "-c", 'echo "[$PLAIN_KEPT][${LANG:-}]"', flags=(
            "--no-isolate", "--keep-env", "PLAIN_KEPT"), env={"PLAIN_KEPT": "kept-value"})
        assert r.stdout.strip() == "[][C.UTF-8]", r.stderr
        assert "could not check" in r.stderr and "PLAIN_KEPT" in r.stderr
    finally:
        unlock = world.run([*vp, "unlock", *home, "--password-file",
                            str(world.proxy.home.password_file)])
        assert unlock.returncode == 0, unlock.stderr


AGENT_TABLE = """
import os, sys
print(os.environ.get("CONF_KEPT"))
try:
    open(os.path.join(sys.argv[1], "out"), "w").close()
    print("wrote")
except OSError as e:
    print("refused", e.errno)
try:
    print(repr(open(os.path.expanduser("~/notes")).read()))
except OSError as e:
    print("hidden", e.errno)
"""


def test_agent_table_keeps_writes_and_hides(world: World) -> None:
    """``[agent] keep_env``, ``write`` and ``hide`` from services.toml; the twin without
    the sandbox reads the hidden file (and the kept variable passes there too)."""
    out = str(world.base / "shared-out")
    inside = world.exec(sys.executable, "-c", AGENT_TABLE, out, env={"CONF_KEPT": "yes"})
    assert inside.stdout.split("\n")[:3] == ["yes", "wrote", "hidden 13"], inside.stderr
    plain = world.exec(sys.executable, "-c", AGENT_TABLE, out, flags=("--no-isolate",),
                       env={"CONF_KEPT": "yes"})
    assert plain.stdout.split("\n")[:3] == ["yes", "wrote", "'private notes\\n'"], plain.stderr
