"""The vaultproxy home directory: where each file lives, and the permission rules."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vaultproxy.errors import PermissionProblem, UsageError, VaultproxyError

DEFAULT_HOME = "~/.config/vaultproxy"


@dataclass(frozen=True)
class Home:
    path: Path

    @classmethod
    def resolve(cls, flag: str | None) -> Home:
        raw = flag or os.environ.get("VAULTPROXY_HOME") or DEFAULT_HOME
        return cls(Path(raw).expanduser().absolute())

    @property
    def services(self) -> Path:
        return self.path / "services.toml"

    @property
    def keystore(self) -> Path:
        return self.path / "keystore.enc"

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def ca_bundle(self) -> Path:
        return self.path / "ca-bundle.pem"

    @property
    def admin_token(self) -> Path:
        return self.path / "admin-token"

    @property
    def admin_sock(self) -> Path:
        return self.path / "admin.sock"

    @property
    def proxy_sock(self) -> Path:
        return self.path / "proxy.sock"

    @property
    def audit(self) -> Path:
        return self.path / "audit.jsonl"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def claim(self) -> int:
        """Hold an exclusive flock on the home directory for this process's lifetime.

        One running proxy per home: a second ``vaultproxy run`` (or mitmdump with the addon)
        on the same home would otherwise overwrite the first one's admin-token and run.json.
        Returns the fd (closing it releases the claim; it is not inherited by children).
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                pid = json.loads(self.run_json.read_text()).get("pid")
            except (OSError, ValueError, AttributeError):
                pid = None
            who = f" (pid {pid})" if isinstance(pid, int) else ""
            raise VaultproxyError(
                f"another vaultproxy{who} is already running on {self.path}; "
                "stop it first, or use another --home"
            ) from None
        return fd

    @property
    def mitm_confdir(self) -> Path:
        return self.path / "mitmproxy"

    def create(self) -> None:
        """Create the home 0700 (and its parents as needed)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def require(self) -> None:
        """The home must exist and be private; otherwise say how to fix it."""
        if not self.path.is_dir():
            raise UsageError(
                f"vaultproxy home {self.path} does not exist; run `vaultproxy init "
                f"--home {self.path}` first"
            )
        check_private(self.path, 0o700)


def check_private(path: Path, wanted: int) -> None:
    """Refuse a file or directory that group/other can read or write, or that is not ours."""
    check_mode(path, wanted, deny=0o077, what="accessible")


def check_mode(path: Path, wanted: int, *, deny: int, what: str) -> None:
    """Refuse a symlink, a path not owned by us, or one with any ``deny`` permission bit;
    the message names the chmod/chown that fixes it."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionProblem(f"{path} is a symbolic link; replace it with a regular file")
    if st.st_uid != os.getuid():
        raise PermissionProblem(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}); "
            f"fix with: chown {os.getuid()} {path}"
        )
    if st.st_mode & deny:
        raise PermissionProblem(
            f"{path} is {what} by group/other (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix with: chmod {wanted:04o} {path}"
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
