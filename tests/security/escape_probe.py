"""Run *inside* `vaultproxy exec` by tests/security/test_escape.py: the ways out that the
allowlist sandbox closes. Prints one JSON object; never prints what it read.

Usage: python escape_probe.py SPEC_JSON, SPEC = {"host_socket", "writes": [paths],
"reads": [paths], "env": [names]}.

- ``uring_socket``: IORING_OP_SOCKET(AF_UNIX) + IORING_OP_CONNECT to a same-uid server
  outside (what a tmux server is), in pure Python (ctypes), as the attack needs no compiler;
- ``proc_sys``: write /proc/sys/kernel/core_pattern as root, *the value it already has*
  (the test must not change the machine);
- ``sysrq``: open /proc/sysrq-trigger for writing (nothing is written);
- ``write:PATH``: open a file the operator runs later (a launcher, a shell rc) for appending
  (nothing is written);
- ``read:PATH``: read a byte of a credential file (or an alias of one);
- ``env``: a short hash of each named variable's value (the test compares hashes);
- ``fds``: descriptors open beyond 0-2 (the probe's own excluded).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import socket
import struct
import sys
from collections.abc import Callable

NR_IO_URING_SETUP, NR_IO_URING_ENTER = 425, 426  # the same on every ABI since Linux 5.1
IORING_OP_CONNECT, IORING_OP_SOCKET = 16, 45
IORING_ENTER_GETEVENTS = 1
SQ_RING, CQ_RING, SQES = 0, 0x8000000, 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _SqOff(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("head", "tail", "ring_mask", "ring_entries",
                                                "flags", "dropped", "array", "resv1")]
    _fields_ += [("user_addr", ctypes.c_uint64)]


class _CqOff(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("head", "tail", "ring_mask", "ring_entries",
                                                "overflow", "cqes", "flags", "resv1")]
    _fields_ += [("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("sq_entries", "cq_entries", "flags",
                                                "sq_thread_cpu", "sq_thread_idle", "features",
                                                "wq_fd")]
    _fields_ += [("resv", ctypes.c_uint32 * 3), ("sq_off", _SqOff), ("cq_off", _CqOff)]


class Ring:
    def __init__(self) -> None:
        p = _Params()
        fd = _libc.syscall(NR_IO_URING_SETUP, 4, ctypes.byref(p))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd, self.p = fd, p
        self.sq = mmap.mmap(fd, p.sq_off.array + p.sq_entries * 4, offset=SQ_RING)
        self.cq = mmap.mmap(fd, p.cq_off.cqes + p.cq_entries * 16, offset=CQ_RING)
        self.sqes = mmap.mmap(fd, p.sq_entries * 64, offset=SQES)

    def run(self, op: int, fd: int = 0, off: int = 0, addr: int = 0, length: int = 0) -> int:
        """Submit one SQE and wait for its completion; the CQE's result."""
        p = self.p
        sqe = struct.pack("BBHiQQIIQ", op, 0, 0, fd, off, addr, length, 0, 1).ljust(64, b"\0")
        tail = struct.unpack_from("I", self.sq, p.sq_off.tail)[0]
        idx = tail & struct.unpack_from("I", self.sq, p.sq_off.ring_mask)[0]
        self.sqes[idx * 64:idx * 64 + 64] = sqe
        struct.pack_into("I", self.sq, p.sq_off.array + idx * 4, idx)
        struct.pack_into("I", self.sq, p.sq_off.tail, tail + 1)
        if _libc.syscall(NR_IO_URING_ENTER, self.fd, 1, 1, IORING_ENTER_GETEVENTS, None, 0) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
        head = struct.unpack_from("I", self.cq, p.cq_off.head)[0]
        mask = struct.unpack_from("I", self.cq, p.cq_off.ring_mask)[0]
        _user_data, res, _flags = struct.unpack_from("QiI", self.cq,
                                                     p.cq_off.cqes + (head & mask) * 16)
        struct.pack_into("I", self.cq, p.cq_off.head, head + 1)
        return int(res)


def uring_socket(path: str) -> None:
    ring = Ring()
    fd = ring.run(IORING_OP_SOCKET, fd=socket.AF_UNIX, off=socket.SOCK_STREAM)
    if fd < 0:
        raise OSError(-fd, f"IORING_OP_SOCKET: {os.strerror(-fd)}")
    addr = struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0"
    buf = ctypes.create_string_buffer(addr, len(addr))
    res = ring.run(IORING_OP_CONNECT, fd=fd, off=len(addr), addr=ctypes.addressof(buf))
    if res < 0:
        raise OSError(-res, f"IORING_OP_CONNECT: {os.strerror(-res)}")
    with socket.socket(fileno=fd) as s:
        s.settimeout(10)
        if s.recv(5) != b"hello":
            raise OSError("no answer")


def proc_sys() -> None:
    path = "/proc/sys/kernel/core_pattern"
    with open(path, "rb") as f:
        same = f.read()
    with open(path, "wb") as f:  # the value it has: nothing changes if this succeeds
        f.write(same)


def sysrq() -> None:
    os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY))  # opened, nothing written


def append(path: str) -> None:
    with open(path, "ab"):
        pass


def read_some(path: str) -> None:
    with open(path, "rb") as f:
        if not f.read(1):
            raise OSError("empty")


def open_fds() -> list[int]:
    names = os.listdir("/proc/self/fd")  # its own descriptor is gone once this returns
    return sorted(fd for fd in (int(n) for n in names) if fd > 2 and _is_open(fd))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]


results: dict[str, object] = {}


def attempt(name: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is a "blocked"
        results[name] = f"blocked: {type(e).__name__}: {getattr(e, 'errno', '')}"
    else:
        results[name] = "reached"


def main() -> None:
    spec = json.loads(sys.argv[1])
    results["fds"] = open_fds()
    attempt("uring_socket", lambda: uring_socket(spec["host_socket"]))
    if os.geteuid() == 0:
        attempt("proc_sys", proc_sys)
        if os.path.exists("/proc/sysrq-trigger"):
            attempt("sysrq", sysrq)
    for path in spec.get("writes", []):
        attempt(f"write:{path}", lambda p=path: append(p))
    for path in spec.get("reads", []):
        attempt(f"read:{path}", lambda p=path: read_some(p))
    results["env"] = {name: digest(os.environ.get(name)) for name in spec.get("env", [])}
    results["uid"] = os.getuid()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
