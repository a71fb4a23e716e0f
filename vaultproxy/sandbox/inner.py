"""``python -P -m vaultproxy.sandbox.inner SPEC_FD CTL_FD BROKER_FD`` — the first process in
the sandbox.

SPEC_FD (a memfd, read once and closed) holds ``{"argv", "env", "listen"}``: the
agent's command and its whole environment (the agent token included, which is why it never
travels in any process's argv). CTL_FD is a socket to ``vaultproxy exec`` outside: it sends
signal numbers to relay to the agent (one byte each); we send back ``exit N`` or
``signal N`` when the agent is gone, so ``exec`` ends the same way the agent did.
BROKER_FD (``-1`` with ``--share-net``) hands in connections to the proxy (broker.py).

Terminal signals (Ctrl-C, Ctrl-\\) reach the agent directly: it stays in the terminal's
foreground process group. This process and bubblewrap ignore them (inherited from ``exec``);
the agent starts with every signal at its default.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

from vaultproxy.sandbox.broker import Connector
from vaultproxy.sandbox.forwarder import Forwarder

# Reset to the default in the agent (Python ignores SIGPIPE/SIGXFSZ; exec ignores the rest).
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                   signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True)
class Spec:
    argv: list[str]
    env: dict[str, str]
    listen: tuple[str, int] | None

    @classmethod
    def parse(cls, raw: bytes) -> Spec:
        data: dict[str, Any] = json.loads(raw)
        listen = data.get("listen")
        return cls(
            argv=[str(a) for a in data["argv"]],
            env={str(k): str(v) for k, v in data["env"].items()},
            listen=(str(listen[0]), int(listen[1])) if listen else None,
        )


def read_spec(fd: int) -> Spec:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb") as f:
            return Spec.parse(f.read())
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def encode_status(wait_status: int) -> bytes:
    if os.WIFSIGNALED(wait_status):
        return f"signal {os.WTERMSIG(wait_status)}\n".encode()
    return f"exit {os.waitstatus_to_exitcode(wait_status)}\n".encode()


def close_on_exec_all() -> None:
    """Whatever is open here beyond stdio (ours, or anything bubblewrap left) is not the
    agent's: mark every descriptor >= 3 close-on-exec."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def spawn(spec: Spec) -> int:
    close_on_exec_all()
    return os.posix_spawnp(
        spec.argv[0], spec.argv, spec.env,
        setsigdef=DEFAULT_SIGNALS, setsigmask=(),
    )


def relay_signals(ctl: socket.socket, pid: int) -> None:
    """Deliver each signal number ``exec`` sends to the agent, until the socket closes."""
    while True:
        try:
            data = ctl.recv(64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def report(ctl: socket.socket, line: bytes) -> None:
    with contextlib.suppress(OSError):
        ctl.sendall(line)


def run(spec: Spec, ctl: socket.socket, broker: socket.socket | None) -> int:
    if spec.listen and broker is not None:
        try:
            Forwarder(spec.listen, Connector(broker)).start()
        except OSError as e:
            print(f"vaultproxy: sandbox forwarder: {e}", file=sys.stderr)
            report(ctl, b"exit 1\n")
            return 1
    try:
        pid = spawn(spec)
    except FileNotFoundError:
        print(f"vaultproxy: {spec.argv[0]}: command not found", file=sys.stderr)
        report(ctl, b"exit 127\n")
        return 127
    except PermissionError:
        print(f"vaultproxy: {spec.argv[0]}: permission denied", file=sys.stderr)
        report(ctl, b"exit 126\n")
        return 126
    threading.Thread(target=relay_signals, args=(ctl, pid), daemon=True).start()
    _, status = os.waitpid(pid, 0)
    report(ctl, encode_status(status))
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not all(a.lstrip("-").isdigit() for a in argv[1:]):
        print("vaultproxy sandbox: started by `vaultproxy exec`, not by hand", file=sys.stderr)
        return 2
    spec_fd, ctl_fd, broker_fd = (int(a) for a in argv[1:])
    for fd in (spec_fd, ctl_fd, broker_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)  # the agent inherits none of them
    ctl = socket.socket(fileno=ctl_fd)
    broker = socket.socket(fileno=broker_fd) if broker_fd >= 0 else None
    return run(read_spec(spec_fd), ctl, broker)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
