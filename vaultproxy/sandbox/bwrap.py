"""The bubblewrap command line for an isolated agent, and whether it can run here.

What the sandbox gives the agent (SPEC §7, SECURITY.md §3) - an allowlist:

- the host file system *read-only*, except the working directory, a private ``/tmp`` and
  the ``--write`` paths, so nothing the operator runs later outside (a launcher in
  ``~/.local/bin``, a shell rc file, a systemd unit, a git hook) can be planted; inside a
  writable directory its ``.git/hooks`` and ``.git/config`` stay read-only (both run
  commands for whoever uses the repository next);
- the vaultproxy homes, the password file and the user's credential stores covered (empty
  tmpfs, /dev/null) under every name (sandbox/hide.py); vaultproxy's own code and Python
  read-only even where they sit in a writable directory;
  the CA files the environment names sit read-only in a directory of their own;
- a fresh ``/dev`` (no disks, no other terminals) and ``/proc`` of its own pid namespace
  (the proxy's processes do not exist there), with ``/proc/sys`` and ``/proc/sysrq-trigger``
  read-only: a root agent keeps uid 0 on the host, and ``kernel.core_pattern`` checks the
  uid, not a capability;
- a user namespace with every capability dropped (also as root), no further user
  namespaces, and ``no_new_privs`` (bubblewrap sets it), so no mount can be undone;
- a seccomp filter (sandbox/seccomp.py), an allowlist of system calls: no terminal
  injection, no new Unix socket by any syscall path (``socket`` and io_uring alike), no
  kernel keyring, no namespace or mount call;
- unless ``share_net``: a network namespace with only ``lo``; the forwarder inside gets its
  connections to the proxy from outside (sandbox/broker.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vaultproxy.errors import UsageError

PACKAGE = "bubblewrap"
INNER_MODULE = "vaultproxy.sandbox.inner"
# Global kernel settings: read-only even to a root agent (bubblewrap covers /proc/irq and
# /proc/bus itself). Bound from the host's /proc: the same settings, read-only.
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger")
PRIVATE_TMP = "/tmp"  # noqa: S108 - an empty tmpfs of the sandbox's own, not the host's
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Layout:
    """Paths of one sandbox: what to hide, what may be written, and our files' directory."""

    hide_dirs: tuple[str, ...]  # covered by an empty tmpfs
    hide_files: tuple[str, ...]  # covered by /dev/null
    read_only: tuple[str, ...]  # bound read-only onto themselves (vaultproxy, its Python)
    files_dir: str  # host dir, mounted read-only at the same path
    writable: tuple[str, ...] = ()  # bound read-write (the working directory, --write)
    protected: tuple[str, ...] = ()  # read-only again inside a writable one (.git/hooks)


def namespace_args(
    *, share_net: bool, drop_caps: bool = True, disable_userns: bool = True
) -> list[str]:
    """Namespaces and privileges. ``drop_caps=False`` exists only for the test that shows
    what the capability drop prevents. ``disable_userns=False`` for bubblewrap < 0.8, which
    lacks the option (a nested user namespace still cannot unlock the hiding mounts: the
    kernel locks mounts inherited from a more privileged namespace)."""
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc"]
    if drop_caps:
        args.append("--unshare-user")
        if disable_userns:
            args.append("--disable-userns")
        args += ["--cap-drop", "ALL"]
    if not share_net:
        args.append("--unshare-net")
    return args


def mount_args(layout: Layout) -> list[str]:
    """Order matters: each mount covers what an earlier one shows at that path."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for p in PROC_READ_ONLY:
        args += ["--ro-bind-try", p, p]
    args += ["--tmpfs", PRIVATE_TMP]
    for p in layout.writable:
        args += ["--bind", p, p]
    for p in (*layout.protected, *layout.read_only):
        args += ["--ro-bind", p, p]
    for d in layout.hide_dirs:
        args += ["--tmpfs", d]
    for f in layout.hide_files:
        args += ["--ro-bind", "/dev/null", f]
    args += ["--ro-bind", layout.files_dir, layout.files_dir]
    return args


def protected(writable: tuple[str, ...]) -> tuple[str, ...]:
    """``.git/hooks`` and ``.git/config`` of each writable directory that is a repository
    (a missing hooks directory is created empty, so there is something to cover)."""
    out = []
    for w in writable:
        git = Path(w) / ".git"
        if not git.is_dir() or git.is_symlink():
            continue
        hooks = git / "hooks"
        if not hooks.exists():
            with contextlib.suppress(OSError):
                hooks.mkdir(mode=0o755)
        out += [str(p) for p in (hooks, git / "config") if p.exists() and not p.is_symlink()]
    return tuple(out)


def command(
    bwrap: str, layout: Layout, *, share_net: bool, python: str, spec_fd: int, ctl_fd: int,
    broker_fd: int, cwd: str, seccomp_fd: int | None = None, disable_userns: bool = True,
) -> list[str]:
    """The full argv. It holds no secret: the agent's environment travels in ``spec_fd``."""
    return [
        bwrap,
        *namespace_args(share_net=share_net, disable_userns=disable_userns),
        *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
        *mount_args(layout),
        "--chdir", cwd,
        "--",
        python, "-P", "-m", INNER_MODULE, str(spec_fd), str(ctl_fd), str(broker_fd),
    ]


def own_code() -> tuple[str, ...]:
    """vaultproxy's package directory, its venv and the base Python, de-duplicated, each
    only once (a path inside another listed one is covered by it)."""
    import vaultproxy

    candidates = [os.path.realpath(p) for p in (
        Path(vaultproxy.__file__).parent, sys.prefix, sys.base_prefix)]
    out: list[str] = []
    for c in sorted(set(candidates), key=len):
        if os.path.isdir(c) and c != "/" and not any(
                Path(c).is_relative_to(o) for o in out):
            out.append(c)
    return tuple(out)


def unavailable(reason: str) -> UsageError:
    return UsageError(
        f"cannot isolate the agent: {reason}. Install the `{PACKAGE}` package (Debian/Ubuntu: "
        f"apt install {PACKAGE}; Fedora: dnf install {PACKAGE}) and make sure user namespaces "
        "are enabled, or run with --no-isolate (no sandbox at all; the agent can read your "
        "vaultproxy home). --share-net needs bubblewrap too"
    )


def find() -> str:
    """The bwrap executable on $PATH, or exit 2 naming the package and both flags."""
    if not os.uname().sysname == "Linux":
        raise UsageError("isolation needs Linux (bubblewrap); on this system run "
                         "`vaultproxy exec --no-isolate` and read SECURITY.md §3")
    path = shutil.which("bwrap")
    if path is None:
        raise unavailable("bubblewrap (bwrap) is not installed or not on PATH")
    return path


def has_disable_userns(bwrap: str) -> bool:
    """Whether this bubblewrap knows ``--disable-userns`` (0.8.0 and later)."""
    try:
        r = subprocess.run([bwrap, "--help"], capture_output=True, text=True,  # noqa: S603
                           timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--disable-userns" in r.stdout + r.stderr


def probe(bwrap: str, *, share_net: bool, disable_userns: bool = True) -> None:
    """Run ``true`` in the same namespaces; a failure (user namespaces disabled, an AppArmor
    restriction, ...) exits 2 with bubblewrap's own reason."""
    true = shutil.which("true") or "/bin/true"
    argv = [bwrap, *namespace_args(share_net=share_net, disable_userns=disable_userns),
            "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--", true]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,  # noqa: S603
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise unavailable(f"bubblewrap did not run ({e})") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        raise unavailable(f"bubblewrap cannot create the sandbox here ({why}); user "
                          "namespaces may be disabled (sysctl user.max_user_namespaces, "
                          "kernel.apparmor_restrict_unprivileged_userns)")


def writable_paths(cwd: str, user_homes: Sequence[str], extra: Sequence[str],
                   warn: Callable[[str], None]) -> tuple[str, ...]:
    """The working directory and the ``--write`` paths, resolved. A working directory that
    is ``/`` or holds a home (your rc files, ``~/.local/bin``) stays read-only: writing there
    is what the read-only file system is for preventing; ``--write`` it to allow it."""
    out = []
    real_cwd = os.path.realpath(cwd)
    if real_cwd == "/" or any(Path(os.path.realpath(h)).is_relative_to(real_cwd)
                              for h in user_homes if h):
        warn(f"the working directory {cwd} holds your home: read-only in the sandbox "
             "(cd into a project, or pass --write PATH)")
    else:
        out.append(real_cwd)
    for raw in extra:
        path = os.path.realpath(os.path.expanduser(raw))
        if not os.path.exists(path):
            raise UsageError(f"--write {raw}: no such file or directory (create it first, or fix "
                             "[agent] write in services.toml)")
        if path == "/":
            raise UsageError("--write /: that is no sandbox; use --no-isolate instead")
        out.append(path)
    return tuple(dict.fromkeys(out))
