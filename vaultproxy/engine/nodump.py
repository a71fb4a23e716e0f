"""Make this process non-dumpable: ``prctl(PR_SET_DUMPABLE, 0)``.

A non-dumpable process's ``/proc/PID/{mem,environ,maps,fd}`` belong to root, and another
process of the same (non-root) uid can neither read them nor ``ptrace`` it; no core file is
written. ``execve`` resets the flag, so every proxy process (the supervisor, each worker, the
mitmdump addon) calls this itself at start. Root, or a holder of CAP_SYS_PTRACE, still wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def disable() -> bool:
    """Non-dumpable from now on; False (logged) where prctl is unavailable (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        rc = _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        rc = -1
    if rc != 0:
        logger.warning("SECURITY: could not make this process non-dumpable (prctl failed): "
                       "same-uid processes can read its memory")
        return False
    return True


def is_dumpable() -> bool:
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
