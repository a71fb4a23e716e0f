"""The sandbox's seccomp filter: an allowlist of the system calls an agent's tools need.

Everything not named in ``ALLOWED`` fails with ENOSYS, as on a kernel that lacks the call
(so runtimes take their fallback: glibc's ``clone3`` -> ``clone``, libuv's io_uring -> epoll).
The set is what a program running as an ordinary user needs - files, memory, processes and
threads, signals, time, IP sockets, pipes, events, SysV IPC in the sandbox's own namespace -
close to Docker's default profile, of which it keeps the shape, and it grows only by a named
need. Left out, because each reaches past the sandbox or is kernel attack surface an agent's
tools do not use:

- io_uring (``io_uring_setup``/``enter``/``register``): it performs socket, connect, open and
  the rest *inside the kernel*, where no seccomp filter sees the arguments, so
  ``IORING_OP_SOCKET(AF_UNIX)`` + ``IORING_OP_CONNECT`` would reach a same-uid server
  outside. Docker's default profile refuses it for the same reason.
- the kernel keyrings (``keyctl``, ``add_key``, ``request_key``): the session keyring of your
  login is inherited and may hold Kerberos or ecryptfs keys.
- namespaces and mounts (``unshare``, ``setns``, ``mount``, ``fsopen``, ``open_tree``, ...),
  modules, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``kexec``, ``reboot``, clocks,
  quotas, swap, ``acct``, ``open_by_handle_at``, ``pidfd_getfd``, ``kcmp``: privileged (the
  sandbox has no capability), or attack surface.

Allowed only with a check of their arguments (EPERM otherwise):

- ``ioctl`` except TIOCSTI/TIOCLINUX: the agent shares your controlling terminal (it must:
  Ctrl-C, job control, a TUI). On kernels that still allow TIOCSTI
  (``dev.tty.legacy_tiocsti=1``) it could push keystrokes into that terminal's input queue -
  typed into your shell after ``exec`` ends, *outside* the sandbox. Only the low 32 bits of
  the request are compared (the kernel truncates it to an ``unsigned int``, so high bits
  cannot smuggle a match past the filter).
- ``socket`` except AF_UNIX and AF_VSOCK: the file system is shared, so same-uid servers
  outside listen on paths (or abstract names, with ``--share-net``) the agent could reach: a
  tmux server, the systemd user manager and D-Bus (``systemd-run --user``), an IDE, docker;
  each would run commands outside the sandbox. AF_VSOCK reaches the hypervisor's host.
  ``socketpair()`` keeps working; the forwarder gets its connections to the proxy from
  outside (broker.py). On i386 the multiplexed ``socketcall`` is refused as a whole (its
  arguments cannot be inspected).

The names are resolved to each ABI's numbers by libseccomp (``libseccomp2``, on every
systemd distribution) and assembled here into classic BPF that bubblewrap loads
(``--seccomp FD``). Both ABIs of the machine are covered (x86_64 + x32 + i386; aarch64 +
arm). On other machines there is no filter (``program()`` returns None) and SECURITY.md's
advice applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import struct
from dataclasses import dataclass
from functools import cache

from vaultproxy.errors import UsageError

# classic BPF (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JEQ_K = 0x05 | 0x10 | 0x00
_JA = 0x05 | 0x00
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
AF_VSOCK = 40
DENIED_FAMILIES = (AF_UNIX, AF_VSOCK)

X32_BIT = 0x40000000
IO_URING = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register (every ABI)
CHUNK = 120  # comparisons per run before a local "allow" (a jump reaches 255 ahead at most)

ALLOWED = (
    # files and directories
    "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown",
    "lchown32", "umask", "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64",
    "pwritev", "pwritev2", "lseek", "_llseek", "sendfile", "sendfile64", "copy_file_range",
    "splice", "tee", "vmsplice", "fcntl", "fcntl64", "flock", "fsync", "fdatasync",
    "sync", "syncfs", "sync_file_range", "sync_file_range2", "arm_sync_file_range",
    "fadvise64", "fadvise64_64", "arm_fadvise64_64", "readahead", "fallocate", "truncate",
    "truncate64", "ftruncate", "ftruncate64", "stat", "stat64", "lstat", "lstat64",
    "fstat", "fstat64", "newfstatat", "fstatat64", "statx", "statfs", "statfs64",
    "fstatfs", "fstatfs64", "getdents", "getdents64", "mkdir", "mkdirat", "rmdir",
    "mknod", "mknodat", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "readlink", "readlinkat", "utime", "utimes",
    "utimensat", "utimensat_time64", "futimesat", "getxattr", "lgetxattr", "fgetxattr",
    "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr", "flistxattr",
    "removexattr", "lremovexattr", "fremovexattr", "name_to_handle_at", "inotify_init",
    "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "cachestat",
    # descriptors, pipes, polling, events
    "dup", "dup2", "dup3", "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "select",
    "_newselect", "pselect6", "pselect6_time64", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old", "epoll_pwait",
    "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4", "timerfd_create",
    "timerfd_settime", "timerfd_settime64", "timerfd_gettime", "timerfd_gettime64",
    "memfd_create", "memfd_secret",
    # memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "pkey_mprotect", "pkey_alloc",
    "pkey_free", "madvise", "mincore", "msync", "mlock", "mlock2", "mlockall", "munlock",
    "munlockall", "remap_file_pages", "membarrier", "map_shadow_stack",
    # processes, threads, scheduling, limits, identity (no capability: own ids only)
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "exit", "exit_group", "wait4",
    "waitid", "waitpid", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp",
    "getsid", "setsid", "set_tid_address", "set_robust_list", "get_robust_list", "futex",
    "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "rseq",
    "arch_prctl", "set_thread_area", "get_thread_area", "modify_ldt", "set_tls",
    "cacheflush", "breakpoint", "prctl", "personality", "seccomp", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self", "capget", "capset", "getuid", "getuid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32", "getresuid",
    "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32", "setuid",
    "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
    "setresuid", "setresuid32", "setresgid", "setresgid32", "setfsuid", "setfsuid32",
    "setfsgid", "setfsgid32", "setgroups", "setgroups32", "getrlimit", "ugetrlimit",
    "setrlimit", "prlimit64", "getrusage", "getpriority", "setpriority", "ioprio_get",
    "ioprio_set", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr",
    "sched_setattr", "sched_getparam", "sched_setparam", "sched_getscheduler",
    "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "getcpu", "uname", "sysinfo",
    "getrandom", "ptrace", "process_vm_readv", "process_vm_writev", "process_mrelease",
    "pidfd_open", "pidfd_send_signal",
    # signals
    "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn",
    "pause", "restart_syscall", "alarm", "getitimer", "setitimer",
    # time
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres",
    "clock_getres_time64", "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
    "times", "timer_create", "timer_delete", "timer_settime", "timer_settime64",
    "timer_gettime", "timer_gettime64", "timer_getoverrun", "adjtimex", "clock_adjtime",
    "clock_adjtime64",
    # sockets (``socket`` itself is checked below)
    "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "shutdown", "send", "sendto", "sendmsg",
    "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
    # SysV and POSIX IPC (the sandbox's own ipc namespace)
    "ipc", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "semctl", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open",
    "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
)
# i386's direct socket and IPC calls (Linux 4.3 / 5.1), which libseccomp resolves only
# through its socketcall/ipc multiplexing: socketpair..shutdown, then semget..msgctl.
I386_EXTRA = (*range(360, 374), *range(393, 403))


@dataclass(frozen=True)
class Abi:
    arch: int  # AUDIT_ARCH_* (what the kernel reports in seccomp_data.arch)
    tokens: tuple[int, ...]  # libseccomp arch tokens whose numbers belong here (x86_64 + x32)
    ioctl: tuple[int, ...]
    socket: tuple[int, ...]
    denied: tuple[int, ...] = ()  # EPERM whatever the arguments (i386 socketcall)
    extra: tuple[int, ...] = ()


ARCHES: dict[str, list[Abi]] = {
    "x86_64": [Abi(0xC000003E, (0xC000003E, 0x4000003E), ioctl=(16, X32_BIT | 514),
                   socket=(41, X32_BIT | 41)),
               Abi(0x40000003, (0x40000003,), ioctl=(54,), socket=(359,), denied=(102,),
                   extra=I386_EXTRA)],
    "aarch64": [Abi(0xC00000B7, (0xC00000B7,), ioctl=(29,), socket=(198,)),
                Abi(0x40000028, (0x40000028,), ioctl=(54,), socket=(281,))],
}

Insn = tuple[int, int, int, int]  # code, jt, jf, k
# Before assembly: a label (str), ("ld", offset), ("ret", value), ("ja", label) or
# ("jeq", k, label-if-true | None, label-if-false | None); None = the next instruction.
Item = str | tuple[str, int] | tuple[str, str] | tuple[str, int, str | None, str | None]


@cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    try:
        lib = ctypes.CDLL(name or "libseccomp.so.2")
    except OSError:
        raise UsageError(
            "cannot isolate the agent: libseccomp is not installed (Debian/Ubuntu: apt "
            "install libseccomp2; Fedora: dnf install libseccomp); or run with --no-isolate "
            "(no sandbox at all)") from None
    fn = lib.seccomp_syscall_resolve_name_arch
    fn.argtypes, fn.restype = [ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int
    return lib


def allowed_numbers(abi: Abi) -> list[int]:
    """The ABI's numbers of ``ALLOWED`` (a name the ABI lacks resolves negative: skipped)."""
    resolve = _libseccomp().seccomp_syscall_resolve_name_arch
    special = {*abi.ioctl, *abi.socket, *abi.denied}
    out = {nr for token in abi.tokens for name in ALLOWED
           if (nr := resolve(token, name.encode())) >= 0}
    return sorted((out | set(abi.extra)) - special)


def _arch_block(n: int, abi: Abi) -> list[Item]:
    """One ABI: not this arch -> the next block; ioctl/socket -> their argument checks; an
    allowed number -> allow; anything else -> ENOSYS."""
    nxt, ioctl, sock, allow, deny = (f"next{n}", f"ioctl{n}", f"socket{n}", f"allow{n}",
                                     f"deny{n}")
    out: list[Item] = [("ld", _OFF_ARCH), ("jeq", abi.arch, f"in{n}", None), ("ja", nxt),
                       f"in{n}", ("ld", _OFF_NR)]
    out += [("jeq", nr, deny, None) for nr in abi.denied]
    out += [("jeq", nr, sock, None) for nr in abi.socket]
    out += [("jeq", nr, ioctl, None) for nr in abi.ioctl]
    out += [("ja", f"list{n}")]
    out += [ioctl, ("ld", _OFF_ARG1_LO), *_refuse(DENIED_REQUESTS, deny, allow)]
    out += [sock, ("ld", _OFF_ARG0_LO), *_refuse(DENIED_FAMILIES, deny, allow)]
    out += [allow, ("ret", SECCOMP_RET_ALLOW), deny, ("ret", SECCOMP_RET_ERRNO | EPERM)]
    out.append(f"list{n}")
    numbers = allowed_numbers(abi)
    for c in range(0, len(numbers), CHUNK):
        label = f"ok{n}_{c}"
        out += [("jeq", nr, label, None) for nr in numbers[c:c + CHUNK]]
        out += [("ja", f"after{n}_{c}"), label, ("ret", SECCOMP_RET_ALLOW), f"after{n}_{c}"]
    out += [("ret", SECCOMP_RET_ERRNO | ENOSYS), nxt]
    return out


def _refuse(values: tuple[int, ...], deny: str, allow: str) -> list[Item]:
    """Jump to ``deny`` when the accumulator is one of ``values``, else to ``allow``."""
    return [("jeq", v, deny, allow if i == len(values) - 1 else None)
            for i, v in enumerate(values)]


def _assemble(items: list[Item]) -> list[Insn]:
    """Resolve labels into relative jump offsets."""
    labels: dict[str, int] = {}
    insns: list[tuple[str, int] | tuple[str, str] | tuple[str, int, str | None, str | None]] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out: list[Insn] = []
    for pc, ins in enumerate(insns):

        def rel(target: str | None, pc: int = pc, limit: int = 255) -> int:
            off = 0 if target is None else labels[target] - pc - 1
            if not 0 <= off <= limit:
                raise ValueError("seccomp jump out of range")
            return off

        if len(ins) == 4:
            out.append((_JEQ_K, rel(ins[2]), rel(ins[3]), ins[1]))
        elif ins[0] == "ja":
            out.append((_JA, 0, 0, rel(str(ins[1]), limit=0xFFFF)))
        else:
            out.append((_LD_W_ABS if ins[0] == "ld" else _RET_K, 0, 0, int(ins[1])))
    return out


@cache
def program(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes for this machine, or None."""
    arches = ARCHES.get(machine or platform.machine())
    if not arches:
        return None
    items: list[Item] = []
    for n, abi in enumerate(arches):
        items += _arch_block(n, abi)
    items.append(("ret", SECCOMP_RET_ERRNO | ENOSYS))  # an ABI of none of the above
    return b"".join(struct.pack("=HBBI", *ins) for ins in _assemble(items))
