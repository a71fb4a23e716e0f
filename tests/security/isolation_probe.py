"""Run *inside* `vaultproxy exec` by tests/security/test_isolation.py: try every way an agent
could reach the vault, the admin API, the proxy's memory or the network around the proxy.

Prints one JSON object: attack -> "reached" or "blocked: <why>". Never prints what it read.
Usage: python isolation_probe.py HOME PROXY_PID UPSTREAM_PORT HOST_SOCKET

HOST_SOCKET stands for a same-uid server outside (tmux, systemd --user, an IDE) that would
run commands for whoever connects: it answers b"hello".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys
from collections.abc import Callable

MNT_DETACH = 2


def read_some(path: str) -> None:
    with open(path, "rb") as f:
        if not f.read(1):
            raise OSError("empty")


def admin_sock(home: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(f"{home}/admin.sock")
    s.sendall(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    if not s.recv(64).startswith(b"HTTP/1.1 200"):
        raise OSError("not 200")
    s.close()


def proc_mem(pid: int) -> None:
    with open(f"/proc/{pid}/maps") as maps:
        start = int(maps.readline().split("-", 1)[0], 16)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(start)
        if not mem.read(16):
            raise OSError("empty")


def umount_then_read(home: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    rc = libc.umount2(home.encode(), MNT_DETACH)
    err = ctypes.get_errno() if rc != 0 else 0
    results["umount_errno"] = err  # type: ignore[assignment]
    read_some(f"{home}/admin-token")


def plant_code() -> None:
    """Write next to vaultproxy's own modules (what the next `vaultproxy run` would import)."""
    import vaultproxy

    target = os.path.join(os.path.dirname(vaultproxy.__file__), "_isolation_probe_plant.py")
    with open(target, "w") as f:
        f.write("# planted\n")
    os.unlink(target)


def host_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    if s.recv(5) != b"hello":
        raise OSError("no answer")
    s.close()


def direct(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=10).close()


results: dict[str, str] = {}


def attempt(name: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is a "blocked"
        results[name] = f"blocked: {type(e).__name__}"
    else:
        results[name] = "reached"


def main() -> None:
    home, pid, port, host_sock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    attempt("admin_token", lambda: read_some(f"{home}/admin-token"))
    attempt("keystore", lambda: read_some(f"{home}/keystore.enc"))
    attempt("ca_key", lambda: read_some(f"{home}/ca.key"))
    attempt("password_file", lambda: read_some(f"{home}/master-password"))
    attempt("run_json", lambda: read_some(f"{home}/run.json"))
    attempt("admin_sock", lambda: admin_sock(home))
    attempt("proxy_environ", lambda: read_some(f"/proc/{pid}/environ"))
    attempt("proxy_mem", lambda: proc_mem(pid))
    attempt("umount_and_read", lambda: umount_then_read(home))
    attempt("plant_code", plant_code)
    attempt("host_socket", lambda: host_socket(host_sock))
    attempt("direct_upstream", lambda: direct(port))
    results["uid"] = str(os.getuid())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
