"""What the benches that look inside a running proxy share (bench/hops.py, bench/newconn.py,
bench/hooktimes.py, bench/idle.py):

* ``sitecustomize(body, module)``: the text of a ``sitecustomize.py`` that runs ``body``'s
  ``_patch(module)`` once ``module`` is imported (not before: the start-up is unchanged).
  ``write_site`` puts it in a directory the bench sets first on the proxy's PYTHONPATH
  (``TreeProxy.path_prefix``), so the tree's code is not changed.
* ``CALLS_PROFILE``: a ``sys.setprofile`` function for such a body that appends every Python
  call (``py QUALNAME dir/file.py:LINE``) and C call (``c  QUALNAME``) to ``CALLS``.
* ``strace_counts``: the system calls of a process by name over a window (``strace -c``)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CALLS_PROFILE = r'''
CALLS = []

def _profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        CALLS.append("py " + code.co_qualname + " " + "/".join(code.co_filename.rsplit("/", 2)[-2:])
                     + ":" + str(code.co_firstlineno))
    elif event == "c_call":
        CALLS.append("c  " + getattr(arg, "__qualname__", repr(arg)))
'''

_AFTER = r'''
import importlib.abc, sys
class _After(importlib.abc.MetaPathFinder):
    """Patch once DOTTED is imported (not before: start-up unchanged)."""
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        orig = spec.loader.exec_module
        def exec_module(module):
            orig(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _After())
'''


def sitecustomize(body: str, module: str) -> str:
    """``body`` (which defines ``_patch(module)``), then the import hook that calls it with
    ``module`` (a dotted name) right after the module's own code ran."""
    return body + _AFTER.replace("DOTTED", module).replace("MODULE", repr(module))


def write_site(work: Path, text: str) -> Path:
    """``work``/site/sitecustomize.py holding ``text``; the directory, for PYTHONPATH."""
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(text)
    return site


def strace_counts(pid: int, out: Path, during: Callable[[], object], *, attach: float = 0.0,
                  threads: bool = False) -> dict[str, int]:
    """System calls by name of ``pid``'s main thread (every thread with ``threads``: ``-f``)
    while ``during()`` runs, ``attach`` seconds after ``strace -c -p`` started (it attaches);
    its table is written to ``out``."""
    cmd = ["strace", "-c", *(["-f"] if threads else []), "-p", str(pid), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if attach:
        time.sleep(attach)
    during()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls
