"""Start real vaultproxy processes: a home made in-process with the real keystore and CA code
(a cheap test KDF), `vaultproxy run`, mitmdump."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vaultproxy.ca import ensure_ca
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore, store
from vaultproxy.secret import Secret

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"  # the test master password; not a canary secret
# Argon2id at its cheapest: the keystore stores its KDF parameters, so a proxy unlocks a
# test home in microseconds instead of ~0.3 s of the real profile. Keystore/KDF tests make
# their own keystores with the real parameters.
TEST_KDF = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)


@contextlib.contextmanager
def cheap_kdf_floor() -> Iterator[None]:
    """A save keeps TEST_KDF or less (outside tests it is raised to the real floor, ~0.2 s of
    Argon2id for each later save and open). For tests that are not about the KDF."""
    floor, store.KDF_FLOOR = store.KDF_FLOOR, TEST_KDF
    try:
        yield
    finally:
        store.KDF_FLOOR = floor


def _init_home(home: Home) -> None:
    """What `vaultproxy init` makes (home 0700, keystore, CA), in this process."""
    home.create()
    Keystore.create(home.keystore, Secret(PASSWORD), kdf=TEST_KDF)
    ensure_ca(home)


def cli(
    home: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vaultproxy", *args]
    if "--home" not in args:
        cmd += ["--home", str(home)]
    result = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        start_new_session=True,  # no controlling terminal: never a password prompt
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vaultproxy {args[0]} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class ProxyHome:
    path: Path
    password_file: Path

    @classmethod
    def create(
        cls,
        base: Path,
        services: str,
        secrets: dict[str, str | dict[str, str]] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> ProxyHome:
        home = base / "home"
        pw = base / "master-password"
        pw.write_text(PASSWORD)
        os.chmod(pw, 0o600)
        _init_home(Home(home))
        for name, data in (files or {}).items():
            (home / name).write_bytes(data)
        (home / "services.toml").write_text(services)
        os.chmod(home / "services.toml", 0o600)
        th = cls(home, pw)
        th.set_secrets(secrets or {})
        return th

    def set_secret(self, name: str, value: str | dict[str, str]) -> None:
        self.set_secrets({name: value})

    def set_secrets(self, secrets: dict[str, str | dict[str, str]]) -> None:
        """Write secrets in this process, as `vaultproxy secret set` would (same keystore
        code, same atomic save), keeping the home's cheap test KDF."""
        if not secrets:
            return
        with cheap_kdf_floor():
            ks = Keystore.open(Home(self.path).keystore, Secret(PASSWORD))
            for name, value in secrets.items():
                if isinstance(value, str):
                    ks.set_value(name, Secret(value))
                else:
                    for f, v in value.items():
                        ks.set_field(name, f, Secret(v))
            ks.save()

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"


@dataclass
class ProxyProcess:
    home: ProxyHome
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    port: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def start(
        cls, home: ProxyHome, *, locked: bool = False, args: tuple[str, ...] = (),
        user: tuple[int, int] | None = None, env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> ProxyProcess:
        """``user`` = (uid, gid), ``env``: run the proxy as another user (tests as a non-root
        operator). ``nofile``: start it with RLIMIT_NOFILE at that many descriptors (as
        `ulimit -n`)."""
        log = home.path.parent / f"proxy-{time.monotonic_ns()}.log"
        run_json = home.path / "run.json"
        if run_json.exists():
            run_json.unlink()
        cmd = [
            sys.executable,
            "-m",
            "vaultproxy",
            "run",
            "--home",
            str(home.path),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "",  # off unless a test asks (args come after): never the fixed 3202
            *args,
        ]
        if not locked:
            cmd += ["--password-file", str(home.password_file)]
        f = open(log, "wb")  # noqa: SIM115 - closed by the process lifetime
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
            preexec_fn=limit if nofile is not None else None,  # noqa: PLW1509
            **({"user": user[0], "group": user[1], "extra_groups": []} if user else {}),
        )
        self = cls(home, proc, log)
        self.extra["_logfile"] = f
        deadline = time.monotonic() + 90  # a 2-worker start on a loaded 2-core machine
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                f.close()
                raise AssertionError(f"vaultproxy run exited {proc.returncode}:\n{log.read_text()}")
            if run_json.exists():
                try:
                    data = json.loads(run_json.read_text())
                except json.JSONDecodeError:
                    data = {}
                if data.get("pid") == proc.pid:
                    self.url = data["proxy_url"]
                    self.port = int(self.url.rsplit(":", 1)[1])
                    self.extra.update(data)
                    return self
            time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"vaultproxy run did not start:\n{log.read_text()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        f = self.extra.pop("_logfile", None)
        if f is not None:
            f.close()  # type: ignore[attr-defined]
        return self.proc.returncode

    def settle(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) until the proxy's processes are idle: none
        running or in an uninterruptible wait (``/proc/PID/stat``). The proxy writes a
        response's ``request`` record right after the response's write to the agent
        (seam/aftersend.py), in the same step of its loop: once a process that served it
        sleeps again, its record is in ``audit.jsonl``. (A test that read the file the
        instant its response arrived could otherwise see a process preempted between the
        two writes.)"""
        deadline = time.monotonic() + timeout
        while True:
            if not any(_state(pid) in ("R", "D") for pid in _family(self.proc.pid)):
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def audit(self) -> list[dict[str, object]]:
        if self.proc.poll() is None:
            self.settle()
        path = self.home.path / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of ``--workers N``), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError):
                    text = Path(f"/proc/{p}/task/{task}/children").read_text()
                    todo.extend(int(c) for c in text.split())
    return out


def _state(pid: int) -> str:
    """The process's state letter (``R`` running, ``S`` sleeping, ...; "" when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
