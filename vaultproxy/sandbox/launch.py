"""`vaultproxy exec` outside the sandbox: lay out the sandbox's files, hand the agent's
environment over in a memfd, run bubblewrap, relay signals, and end as the agent ended.

The files the agent may see (the CA bundle and ``ca.crt``, both public) are copied into a
fresh 0700 directory that is mounted read-only inside and removed afterwards. Connections to
the proxy's Unix socket are made here and handed in (broker.py). Terminal signals (SIGINT,
SIGQUIT) are ignored here and in bubblewrap: the terminal delivers them to the agent, which
stays in its foreground process group. SIGTERM and SIGHUP sent to this process are relayed
to the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from vaultproxy.sandbox import broker, bwrap, seccomp

TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
BUNDLE_NAME = "ca-bundle.pem"
CA_NAME = "ca.crt"
WGETRC_NAME = "agent-wgetrc"


@dataclass(frozen=True)
class Request:
    """One isolated run: what to run, in which environment, with which home hidden."""

    argv: Sequence[str]
    env: Mapping[str, str]  # the agent's whole environment (placeholders, proxy URL)
    outer_env: Mapping[str, str]  # bubblewrap's own: the same minus anything of ours
    home: Path
    bundle: Path
    ca_cert: Path
    proxy_socket: str | None  # host path of proxy.sock; None: --share-net
    proxy_port: int
    hide: tuple[str, ...] = ()  # resolved paths to cover (sandbox/hide.py)
    writable: tuple[str, ...] = ()  # the working directory (unless it is ~ or /), --write
    disable_userns: bool = True  # bubblewrap >= 0.8 (bwrap.has_disable_userns)


def files_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vaultproxy-exec-"))


def sandbox_env(req: Request, d: Path) -> dict[str, str]:
    """The agent's environment with the CA variables pointing at the sandbox's copies."""
    moved = {str(req.bundle): str(d / BUNDLE_NAME), str(req.ca_cert): str(d / CA_NAME),
             str(req.home / WGETRC_NAME): str(d / WGETRC_NAME)}
    return {key: moved.get(value, value) for key, value in req.env.items()}


def prepare(req: Request, d: Path) -> bwrap.Layout:
    shutil.copyfile(req.bundle, d / BUNDLE_NAME)
    shutil.copyfile(req.ca_cert, d / CA_NAME)
    (d / WGETRC_NAME).write_text(wgetrc_text(str(d / BUNDLE_NAME)))
    for name in (BUNDLE_NAME, CA_NAME, WGETRC_NAME):
        os.chmod(d / name, 0o644)
    visible = [p for p in req.hide if _visible(p, req.writable)]
    return bwrap.Layout(
        hide_dirs=tuple(p for p in visible if os.path.isdir(p)),
        hide_files=tuple(p for p in visible if not os.path.isdir(p)),
        read_only=bwrap.own_code(),
        files_dir=str(d),
        writable=req.writable,
        protected=bwrap.protected(req.writable),
    )


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _visible(path: str, writable: Sequence[str]) -> bool:
    """Whether ``path`` shows in the sandbox at all: the private /tmp hides the host's."""
    return not _under(path, bwrap.PRIVATE_TMP) or any(_under(path, w) for w in writable)


def writable_in(path: str, writable: Sequence[str]) -> bool:
    """Whether the agent may write ``path``: the private /tmp, or a writable path."""
    real = os.path.realpath(path)
    return _under(real, bwrap.PRIVATE_TMP) or any(_under(real, w) for w in writable)


def spec_fd(req: Request, d: Path) -> int:
    """A memfd holding the agent's argv and environment, for ``inner`` to read once."""
    spec = {
        "argv": list(req.argv),
        "env": sandbox_env(req, d),
        "listen": ["127.0.0.1", req.proxy_port] if req.proxy_socket else None,
    }
    return memfd("vaultproxy-exec-spec", json.dumps(spec).encode())


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def run(req: Request, bwrap_path: str) -> int:
    """Run the agent isolated; return its exit code (or die of its signal)."""
    d = files_dir()
    try:
        layout = prepare(req, d)
        status = _run_bwrap(req, bwrap_path, d, layout)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return end_like(status)


def _run_bwrap(req: Request, bwrap_path: str, d: Path, layout: bwrap.Layout) -> str:
    bpf = seccomp.program()
    memfds = [spec_fd(req, d)]
    if bpf is not None:
        memfds.append(memfd("vaultproxy-exec-seccomp", bpf))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    passed = [*memfds, theirs.fileno()]
    broker_ours = broker_theirs = None
    if req.proxy_socket is not None:  # --share-net: no broker, no descriptor for it
        broker_ours, broker_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        broker.start(broker_ours, req.proxy_socket)
        passed.append(broker_theirs.fileno())
    argv = bwrap.command(
        bwrap_path, layout, share_net=req.proxy_socket is None, python=sys.executable,
        spec_fd=memfds[0], ctl_fd=theirs.fileno(),
        broker_fd=broker_theirs.fileno() if broker_theirs is not None else -1,
        cwd=os.getcwd(), seccomp_fd=memfds[1] if bpf is not None else None,
        disable_userns=req.disable_userns,
    )
    # Ignored while bubblewrap starts, so it (and the sandbox's first process) inherit that.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (*TERMINAL_SIGNALS,
                                                              *RELAYED_SIGNALS)}
    try:
        try:
            proc = subprocess.Popen(argv, env=dict(req.outer_env),  # noqa: S603 - our argv
                                    pass_fds=passed)
        finally:
            theirs.close()
            if broker_theirs is not None:
                broker_theirs.close()
            for f in memfds:
                os.close(f)
        return _wait(proc, ours)
    finally:
        ours.close()
        if broker_ours is not None:
            with contextlib.suppress(OSError):
                broker_ours.shutdown(socket.SHUT_RDWR)  # ends the broker thread
            broker_ours.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(proc: subprocess.Popen[bytes], ctl: socket.socket) -> str:
    """Wait for bubblewrap, relaying SIGTERM/SIGHUP to the agent through ``ctl``."""

    def relay(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            ctl.send(bytes([signum]))

    for s in RELAYED_SIGNALS:
        signal.signal(s, relay)
    rc = proc.wait()
    return read_status(ctl) or f"exit {rc}"


def read_status(sock: socket.socket) -> str | None:
    """``exit N`` / ``signal N`` from inner; None when it never got that far."""
    sock.setblocking(False)
    try:
        data = sock.recv(64)
    except OSError:
        return None
    line = data.decode("ascii", "replace").strip()
    return line or None


def end_like(status: str) -> int:
    """The exit code for ``exit N``; for ``signal N`` kill ourselves with N (a shell then
    sees the same death as with a plain child), 128+N if that does not end us."""
    kind, _, num = status.partition(" ")
    n = int(num) if num.isdigit() else 1
    if kind == "signal":
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP keep theirs
            signal.signal(n, signal.SIG_DFL)
        os.kill(os.getpid(), n)
        return 128 + n
    return n


def wgetrc_text(bundle: str) -> str:
    return f"# written by vaultproxy: wget reads no CA variable\nca_certificate = {bundle}\n"
