"""`vaultproxy init`, `secret set|list|rm` and `passwd` as real subprocesses."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tests.canary as canaries
from tests.keystore_cli import init_home, password_file, vp
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration
Canary = Callable[[], str]


@dataclass
class Env:
    home: Path
    pwfile: Path
    password: str = field(repr=False)

    @property
    def common(self) -> list[str]:
        return ["--home", str(self.home), "--password-file", str(self.pwfile)]

    def open(self, password: str | None = None) -> Keystore:
        return Keystore.open(self.home / "keystore.enc", Secret(password or self.password))

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.home.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Env:
    base = tmp_path_factory.mktemp("cli")
    password = canaries.make_canary()
    pw = password_file(base, password)
    home = base / "home"
    canaries.watch(home)
    init_home(home, pw)
    return Env(home, pw, password)


@pytest.fixture
def env(template: Env, tmp_path: Path, canary_watch: Callable[[Path], None]) -> Env:
    home = tmp_path / "home"
    shutil.copytree(template.home, home)
    canary_watch(home)
    return Env(home, template.pwfile, template.password)


def _one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("vaultproxy: ") and stderr.count("\n") == 1, stderr


# -- init -------------------------------------------------------------------------------------

def test_init_creates_everything(template: Env) -> None:
    names = {p.name for p in template.home.iterdir()}
    assert {"keystore.enc", "services.toml", "ca.crt", "ca.key"} <= names
    assert template.open().names() == []
    assert "[[service]]" in (template.home / "services.toml").read_text()


def test_init_never_overwrites(env: Env) -> None:
    before = env.snapshot()
    r = vp("init", *env.common)
    assert r.returncode == 0, r.stderr
    assert "already exists" in r.stdout
    assert env.snapshot() == before


def test_init_without_password_source_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = vp("init", "--home", str(home))
    assert r.returncode == 2
    _one_line_error(r.stderr)
    assert "--password-file" in r.stderr and "VAULTPROXY_PASSWORD_FILE" in r.stderr
    assert not home.exists()


def test_init_uses_password_file_env(tmp_path: Path, canary: Canary,
                                     canary_watch: Callable[[Path], None]) -> None:
    home = tmp_path / "home"
    canary_watch(home)
    password = canary()
    pw = password_file(tmp_path, password)
    r = vp("init", "--home", str(home), env={"VAULTPROXY_PASSWORD_FILE": str(pw)})
    assert r.returncode == 0, r.stderr
    assert Keystore.open(home / "keystore.enc", Secret(password)).names() == []


# -- secret set / list / rm -------------------------------------------------------------------

def test_set_list_rm_round_trip(env: Env, canary: Canary) -> None:
    value, user = canary(), canary()
    assert vp("secret", "set", "openai", *env.common, stdin=f"{value}\n".encode()).returncode == 0
    r = vp("secret", "set", "github", "--field", "username", *env.common, stdin=user.encode())
    assert r.returncode == 0, r.stderr
    ks = env.open()
    openai, github = ks.get("openai"), ks.get("github")
    assert openai is not None and openai.value is not None
    assert openai.value.reveal_str() == value
    assert github is not None and github.fields["username"].reveal_str() == user

    listing = vp("secret", "list", *env.common)
    assert listing.returncode == 0
    assert "openai" in listing.stdout and "github" in listing.stdout
    assert "username" in listing.stdout
    assert value not in listing.stdout + listing.stderr
    assert user not in listing.stdout + listing.stderr

    assert vp("secret", "rm", "openai", *env.common).returncode == 0
    assert env.open().names() == ["github"]
    r = vp("secret", "rm", "openai", *env.common)
    assert r.returncode == 1
    _one_line_error(r.stderr)


def test_set_strips_exactly_one_newline(env: Env, canary: Canary) -> None:
    value = canary()
    r = vp("secret", "set", "a", *env.common, stdin=f"{value}\n\n".encode())
    assert r.returncode == 0, r.stderr
    got = env.open().get("a")
    assert got is not None and got.value is not None and got.value.reveal_str() == value + "\n"


def test_value_in_argv_is_refused(env: Env, canary: Canary) -> None:
    value = canary()
    before = env.snapshot()
    r = vp("secret", "set", "openai", value, *env.common, stdin=canary().encode())
    assert r.returncode == 2
    _one_line_error(r.stderr)
    assert "stdin" in r.stderr
    assert value not in r.stderr + r.stdout
    assert env.snapshot() == before


def test_empty_value_is_refused(env: Env) -> None:
    before = env.snapshot()
    r = vp("secret", "set", "a", *env.common, stdin=b"\n")
    assert r.returncode == 2
    _one_line_error(r.stderr)
    assert env.snapshot() == before


@pytest.mark.parametrize("args", [["set", "Bad.Name"], ["set", "ok", "--field", "No"],
                                  ["rm", "-x-"]])
def test_bad_names_are_usage_errors(env: Env, canary: Canary, args: list[str]) -> None:
    r = vp("secret", *args, *env.common, stdin=canary().encode())
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr


def test_no_password_source_exits_2_with_howto(env: Env, canary: Canary) -> None:
    before = env.snapshot()
    for args in (["secret", "list"], ["secret", "rm", "a"], ["passwd"]):
        r = vp(*args, "--home", str(env.home))
        assert r.returncode == 2, (args, r.stderr)
        _one_line_error(r.stderr)
        assert "--password-file" in r.stderr
    r = vp("secret", "set", "a", "--home", str(env.home), stdin=canary().encode())
    assert r.returncode == 2
    assert "VAULTPROXY_PASSWORD_FILE" in r.stderr
    assert env.snapshot() == before


def test_password_file_env_is_used(env: Env) -> None:
    r = vp("secret", "list", "--home", str(env.home),
           env={"VAULTPROXY_PASSWORD_FILE": str(env.pwfile)})
    assert r.returncode == 0, r.stderr


def test_missing_home_is_a_clear_error(tmp_path: Path, template: Env) -> None:
    missing = tmp_path / "nope"
    r = vp("secret", "list", "--home", str(missing), "--password-file", str(template.pwfile))
    assert r.returncode == 1
    _one_line_error(r.stderr)
    assert "vaultproxy init" in r.stderr and str(missing) in r.stderr
    assert not missing.exists()


def test_home_from_env(env: Env) -> None:
    r = vp("secret", "list", "--password-file", str(env.pwfile),
           env={"VAULTPROXY_HOME": str(env.home)})
    assert r.returncode == 0, r.stderr


# -- damaged / foreign / wrong password -------------------------------------------------------

def _mutate(env: Env, fn: Callable[[bytes], bytes]) -> None:
    path = env.home / "keystore.enc"
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize(("mutation", "expect"), [
    (lambda d: d[: len(d) // 2], "damaged"),
    (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "damaged"),
    (lambda d: b"PK\x03\x04 something else entirely" * 3, "not a vaultproxy keystore"),
    (lambda d: d[:8] + b"\x07" + d[9:], "version 7"),
])
def test_bad_files_are_refused_without_writing(env: Env, canary: Canary,
                                               mutation: Callable[[bytes], bytes],
                                               expect: str) -> None:
    _mutate(env, mutation)
    before = env.snapshot()
    for args in (["secret", "list"], ["secret", "set", "a"], ["passwd", "--new-password-file",
                                                              str(env.pwfile)]):
        r = vp(*args, *env.common, stdin=canary().encode())
        assert r.returncode == 1, (args, r.stderr)
        _one_line_error(r.stderr)
        assert expect in r.stderr
    assert env.snapshot() == before


def test_wrong_password_refused(env: Env, canary: Canary, tmp_path: Path) -> None:
    wrong = password_file(tmp_path, canary(), "wrong")
    before = env.snapshot()
    r = vp("secret", "set", "a", "--home", str(env.home), "--password-file", str(wrong),
           stdin=canary().encode())
    assert r.returncode == 1
    _one_line_error(r.stderr)
    assert "wrong master password" in r.stderr
    assert env.snapshot() == before


# -- passwd -----------------------------------------------------------------------------------

def test_passwd_keeps_entries_and_retires_old_password(env: Env, canary: Canary,
                                                       tmp_path: Path) -> None:
    values = {f"s{i}": canary() for i in range(3)}
    for name, value in values.items():
        assert vp("secret", "set", name, *env.common, stdin=value.encode()).returncode == 0
    assert vp("secret", "set", "s0", "--field", "user", *env.common,
              stdin=values["s0"].encode()).returncode == 0
    new = canary()
    newfile = password_file(tmp_path, new, "new")
    r = vp("passwd", *env.common, "--new-password-file", str(newfile))
    assert r.returncode == 0, r.stderr

    old = vp("secret", "list", *env.common)
    assert old.returncode == 1 and "wrong master password" in old.stderr
    ks = env.open(new)
    assert ks.names() == sorted(values)
    for name, value in values.items():
        e = ks.get(name)
        assert e is not None and e.value is not None and e.value.reveal_str() == value
    s0 = ks.get("s0")
    assert s0 is not None and s0.fields["user"].reveal_str() == values["s0"]
    with pytest.raises(Exception, match="wrong master password"):
        Keystore.open(env.home / "keystore.enc.bak", Secret(env.password))
    assert vp("secret", "list", "--home", str(env.home), "--password-file",
              str(newfile)).returncode == 0


def test_passwd_without_new_password_source(env: Env) -> None:
    before = env.snapshot()
    r = vp("passwd", *env.common)
    assert r.returncode == 2
    _one_line_error(r.stderr)
    assert "--new-password-file" in r.stderr
    assert env.snapshot() == before
