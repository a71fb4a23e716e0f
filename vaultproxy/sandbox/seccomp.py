"""The sandbox's seccomp filter: what the namespaces cannot take away, refused here.

The sandbox is an allowlist of *places* (SECURITY.md §3): its own pid, ipc, user and network
namespaces, no capability, a read-only file system. Those already take away most of the
syscall table: every privileged call (mount, module, reboot, ptrace of a process outside,
raw sockets, open_by_handle_at, ...) needs a capability that is gone, or finds only the
sandbox's own processes. What stays reachable *without* a capability, and crosses the
boundary, is refused by this filter:

- ``ioctl(TIOCSTI)``, ``ioctl(TIOCLINUX)``: the agent shares your controlling terminal (it
  must: Ctrl-C, job control, a TUI). On kernels that still allow TIOCSTI
  (``dev.tty.legacy_tiocsti=1``) it could push keystrokes into that terminal's input queue -
  typed into your shell after ``exec`` ends, *outside* the sandbox. Only the low 32 bits of
  the request are compared (the kernel truncates it to an ``unsigned int``, so high bits
  cannot smuggle a match past the filter).
- ``socket(AF_UNIX, ...)``: the file system is shared, so same-uid servers outside listen on
  paths (or abstract names, with ``--share-net``) the agent could reach: a tmux server, the
  systemd user manager and D-Bus (``systemd-run --user``), an IDE, docker. Each would run
  commands outside the sandbox. Inherited sockets and ``socketpair()`` keep working; the
  forwarder gets its connections to the proxy from outside (broker.py). On i386 the
  multiplexed ``socketcall`` is refused as a whole (its arguments cannot be inspected).
- ``io_uring_setup``/``enter``/``register`` (ENOSYS, as if the kernel had none: runtimes
  such as libuv then fall back to plain syscalls): io_uring performs socket, connect, open
  and the rest *inside the kernel*, where no seccomp filter sees the arguments, so
  ``IORING_OP_SOCKET(AF_UNIX)`` + ``IORING_OP_CONNECT`` would reach the same servers.
  Docker's default profile refuses it for the same reason.
- ``keyctl``, ``add_key``, ``request_key``: the kernel keyrings the sandbox inherits (the
  session keyring of your login) hold credentials (Kerberos, ecryptfs, ...) readable by
  whoever possesses them; no agent tool needs them (Docker refuses them too).

bubblewrap loads this classic-BPF program (``--seccomp FD``); every other call is allowed,
because what remains is bounded by the namespaces. Both ABIs of the machine are covered
(x86_64 + i386 + x32; aarch64 + arm). On other machines there is no filter (``program()``
returns None) and SECURITY.md's advice applies.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# classic BPF (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JEQ_K = 0x05 | 0x10 | 0x00
_RET_K = 0x06 | 0x00
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
ENOSYS = 38
# struct seccomp_data: nr @0, arch @4, instruction_pointer @8, args[6] @16 (little-endian)
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO, _OFF_ARG1_LO = 0, 4, 16, 24

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
DENIED_REQUESTS = (TIOCSTI, TIOCLINUX)
AF_UNIX = 1

X32_BIT = 0x40000000
IO_URING = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register (every ABI)


@dataclass(frozen=True)
class Abi:
    arch: int  # AUDIT_ARCH_*
    ioctl: tuple[int, ...]
    socket: tuple[int, ...]
    denied: tuple[int, ...] = ()  # refused whatever the arguments (EPERM)
    absent: tuple[int, ...] = IO_URING  # answered ENOSYS, as on a kernel without them


ARCHES: dict[str, list[Abi]] = {
    # keyring calls: add_key, request_key, keyctl
    "x86_64": [Abi(0xC000003E, ioctl=(16, X32_BIT | 514), socket=(41, X32_BIT | 41),
                   denied=(248, 249, 250, X32_BIT | 248, X32_BIT | 249, X32_BIT | 250),
                   absent=(*IO_URING, *(X32_BIT | n for n in IO_URING))),
               Abi(0x40000003, ioctl=(54,), socket=(359,), denied=(102, 286, 287, 288))],
    "aarch64": [Abi(0xC00000B7, ioctl=(29,), socket=(198,), denied=(217, 218, 219)),
                Abi(0x40000028, ioctl=(54,), socket=(281,), denied=(309, 310, 311))],
}

Insn = tuple[int, int, int, int]  # code, jt, jf, k
# Before assembly: a label (str), ("ld", offset), ("ret", value) or
# ("jeq", k, label-if-true | None, label-if-false | None); None = the next instruction.
Item = str | tuple[str, int] | tuple[str, int, str | None, str | None]


def _arch_block(n: int, abi: Abi) -> list[Item]:
    """One ABI: not this arch -> the next block; a denied call -> deny; else allow."""
    nxt, is_ioctl, is_socket = f"next{n}", f"ioctl{n}", f"socket{n}"
    out: list[Item] = [("ld", _OFF_ARCH), ("jeq", abi.arch, None, nxt), ("ld", _OFF_NR)]
    out += [("jeq", nr, "deny", None) for nr in abi.denied]
    out += [("jeq", nr, "nosys", None) for nr in abi.absent]
    out += [("jeq", nr, is_socket, None) for nr in abi.socket]
    out += _any_of(abi.ioctl, is_ioctl)
    out += [is_ioctl, ("ld", _OFF_ARG1_LO), *_any_of(DENIED_REQUESTS, "deny")]
    out += [is_socket, ("ld", _OFF_ARG0_LO), *_any_of((AF_UNIX,), "deny")]
    out.append(nxt)
    return out


def _any_of(values: Sequence[int], target: str) -> list[Item]:
    """Jump to ``target`` when the accumulator is one of ``values``, else to "allow"."""
    return [("jeq", v, target, "allow" if i == len(values) - 1 else None)
            for i, v in enumerate(values)]


def _assemble(items: list[Item]) -> list[Insn]:
    """Resolve labels into relative jump offsets."""
    labels: dict[str, int] = {}
    insns: list[tuple[str, int] | tuple[str, int, str | None, str | None]] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out: list[Insn] = []
    for pc, ins in enumerate(insns):

        def rel(target: str | None, pc: int = pc) -> int:
            off = 0 if target is None else labels[target] - pc - 1
            if not 0 <= off <= 255:
                raise ValueError("seccomp jump out of range")
            return off

        if len(ins) == 4:
            out.append((_JEQ_K, rel(ins[2]), rel(ins[3]), ins[1]))
        else:
            out.append((_LD_W_ABS if ins[0] == "ld" else _RET_K, 0, 0, ins[1]))
    return out


def program(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes for this machine, or None."""
    arches = ARCHES.get(machine or platform.machine())
    if not arches:
        return None
    items: list[Item] = []
    for n, abi in enumerate(arches):
        items += _arch_block(n, abi)
    items += ["allow", ("ret", SECCOMP_RET_ALLOW), "deny", ("ret", SECCOMP_RET_ERRNO | EPERM),
              "nosys", ("ret", SECCOMP_RET_ERRNO | ENOSYS)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in _assemble(items))
