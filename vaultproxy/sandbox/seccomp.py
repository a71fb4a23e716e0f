"""A seccomp filter for the sandbox: ``ioctl(TIOCSTI)`` and ``ioctl(TIOCLINUX)`` fail (EPERM).

The agent shares your controlling terminal (it must: Ctrl-C, job control, a TUI). On kernels
that still allow TIOCSTI (``dev.tty.legacy_tiocsti=1``) a process could push keystrokes into
that terminal's input queue - typed into your shell after ``exec`` ends, *outside* the
sandbox. bubblewrap loads this classic-BPF program (``--seccomp FD``); everything else is
allowed. Only the low 32 bits of the request are compared (the kernel truncates it to an
``unsigned int``, so high bits cannot smuggle a match past the filter). Both ABIs of the
machine are covered (x86_64 + i386 + x32; aarch64 + arm). On other machines there is no
filter (``program()`` returns None) and SECURITY.md's advice applies.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Sequence

# classic BPF (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JEQ_K = 0x05 | 0x10 | 0x00
_RET_K = 0x06 | 0x00
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# struct seccomp_data: nr @0, arch @4, instruction_pointer @8, args[6] @16 (little-endian)
_OFF_NR, _OFF_ARCH, _OFF_ARG1_LO = 0, 4, 24

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
DENIED_REQUESTS = (TIOCSTI, TIOCLINUX)

X32_BIT = 0x40000000
# machine -> [(AUDIT_ARCH_*, ioctl syscall numbers under that arch)]
ARCHES: dict[str, list[tuple[int, tuple[int, ...]]]] = {
    "x86_64": [(0xC000003E, (16, X32_BIT | 514)), (0x40000003, (54,))],
    "aarch64": [(0xC00000B7, (29,)), (0x40000028, (54,))],
}

Insn = tuple[int, int, int, int]  # code, jt, jf, k
# Before assembly: a label (str), ("ld", offset), ("ret", value) or
# ("jeq", k, label-if-true | None, label-if-false | None); None = the next instruction.
Item = str | tuple[str, int] | tuple[str, int, str | None, str | None]


def _arch_block(n: int, arch: int, ioctls: Sequence[int]) -> list[Item]:
    """One ABI: not this arch -> the next block; not ioctl -> allow; a denied request -> deny."""
    nxt, is_ioctl = f"next{n}", f"ioctl{n}"
    out: list[Item] = [("ld", _OFF_ARCH), ("jeq", arch, None, nxt), ("ld", _OFF_NR)]
    for i, nr in enumerate(ioctls):
        out.append(("jeq", nr, is_ioctl, "allow" if i == len(ioctls) - 1 else None))
    out += [is_ioctl, ("ld", _OFF_ARG1_LO)]
    for i, req in enumerate(DENIED_REQUESTS):
        out.append(("jeq", req, "deny", "allow" if i == len(DENIED_REQUESTS) - 1 else None))
    out.append(nxt)
    return out


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
    for n, (arch, ioctls) in enumerate(arches):
        items += _arch_block(n, arch, ioctls)
    items += ["allow", ("ret", SECCOMP_RET_ALLOW), "deny", ("ret", SECCOMP_RET_ERRNO | EPERM)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in _assemble(items))
