"""Files a killed run leaves behind: ``run.json``, ``admin.sock``,
``proxy.sock`` and ``admin-token``. ``vaultproxy run`` removes them after it has claimed the
home (files/home.py ``claim``): a live run on this home would hold that claim, so a file found then
belongs to a run that is gone. Each removal is still checked against what it names - the
pid in ``run.json`` is not running, a socket refuses connections - and logged; a file that
fails its check is left alone and said so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from vaultproxy.files.home import Home, pid_alive

logger = logging.getLogger(__name__)


def _socket_dead(path: Path) -> bool:
    """True if nothing accepts on the Unix socket at ``path`` (or it is not a socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def clean_stale(home: Home) -> list[str]:
    """Remove what a dead run left in ``home``; return what was removed (for the log)."""
    removed: list[str] = []
    run_json = home.run_json
    pid: object = None
    if run_json.exists():
        try:
            pid = json.loads(run_json.read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            logger.warning("run.json names pid %d, which is running but does not hold this "
                           "home; leaving the file alone", pid)
        else:
            run_json.unlink(missing_ok=True)
            removed.append(f"run.json (pid {pid} is gone)" if isinstance(pid, int)
                           else "run.json (unreadable)")
    for path in (home.admin_sock, home.proxy_sock):
        if path.is_socket() and _socket_dead(path):
            path.unlink(missing_ok=True)
            removed.append(f"{path.name} (nothing listens)")
    owner_alive = isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)
    if home.admin_token.exists() and not owner_alive:
        # A new token is written at every start; the old one opens nothing once its run is
        # gone, but it should not lie around.
        home.admin_token.unlink(missing_ok=True)
        removed.append("admin-token (its run is gone)")
    for what in removed:
        logger.warning("removed a stale %s left by a run that did not exit cleanly", what)
    return removed
