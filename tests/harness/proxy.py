"""Start real vaultproxy processes: a home made with the real CLI, `vaultproxy run`, mitmdump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"  # the test master password; not a canary secret


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
        cli(home, "init", "--password-file", str(pw))
        for name, data in (files or {}).items():
            (home / name).write_bytes(data)
        (home / "services.toml").write_text(services)
        os.chmod(home / "services.toml", 0o600)
        th = cls(home, pw)
        for name, value in (secrets or {}).items():
            th.set_secret(name, value)
        return th

    def set_secret(self, name: str, value: str | dict[str, str]) -> None:
        if isinstance(value, str):
            cli(
                self.path,
                "secret",
                "set",
                name,
                "--password-file",
                str(self.password_file),
                input=value,
            )
        else:
            for f, v in value.items():
                cli(
                    self.path,
                    "secret",
                    "set",
                    name,
                    "--field",
                    f,
                    "--password-file",
                    str(self.password_file),
                    input=v,
                )

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
        cls, home: ProxyHome, *, locked: bool = False, args: tuple[str, ...] = ()
    ) -> ProxyProcess:
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
            *args,
        ]
        if not locked:
            cmd += ["--password-file", str(home.password_file)]
        f = open(log, "wb")  # noqa: SIM115 - closed by the process lifetime
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self = cls(home, proc, log)
        self.extra["_logfile"] = f
        deadline = time.monotonic() + 30
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

    def audit(self) -> list[dict[str, object]]:
        path = self.home.path / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
