"""Canary leak check: every test secret is ``vpcanary_<hex>``; the run fails if one leaks.

Scanned at session end: captured stdout/stderr/log of every test report, and every file or
directory registered with ``canary_watch``. Tests make canaries with the ``canary`` fixture.

A canary is found raw (also truncated to 6 hex digits) and in every encoding the proxy's own
redactor matches (``vaultproxy.values.redact.encoded_forms``): hex in either case, base64
std and urlsafe, padded or not, whole or embedded at any byte alignment, and base32. A leak
that went through ``.hex()`` or ``b64encode`` on its way to a log is still a leak. Every
encoded form of a canary begins with the same encoded form of ``vpcanary_``; a buffer with
none of those few markers is skipped without looking for each canary's forms.

Under pytest-xdist (``make test-fast`` runs ``-n auto``) every worker is its own process and
session: the canaries it made, the files it watched and the reports it produced are its own,
so each worker scans them at its session end and sends its hits and canary count to the
controller (``config.workeroutput``). The controller fails the run if any worker found a
leak, or if a worker went down without sending its result (a crash: its leaks are unknown).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from vaultproxy.values.redact import encoded_forms

# Six hex digits or more: a truncated canary ("vpcanary_02a5ad…") is a leak too.
CANARY_RE = re.compile(rb"vpcanary_[0-9a-f]{6,}")

PREFIX = b"vpcanary_"
# The first 8 characters of each encoded form of the prefix: every encoded form of every
# canary contains one of them (tests/security/test_canary_check.py checks it).
MARKERS = frozenset(form[:8] for form in encoded_forms(PREFIX))

_made: set[str] = set()
_forms: dict[str, frozenset[bytes]] = {}  # canary -> its encoded forms
_watched: list[Path] = []
_hits: list[str] = []
_worker_made: dict[str, int] = {}  # xdist controller: worker id -> canaries it made
_nodes_done: set[int] = set()

# The keys of a worker's result in ``config.workeroutput`` (xdist sends it to the controller).
_OUT_HITS = "vaultproxy_canary_hits"
_OUT_MADE = "vaultproxy_canary_made"


def make_canary() -> str:
    value = "vpcanary_" + secrets.token_hex(12)
    _made.add(value)
    _forms[value] = frozenset(encoded_forms(value.encode()))
    return value


def watch(path: Path) -> None:
    _watched.append(Path(path))


def scan_text(where: str, text: str | bytes) -> None:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    for m in CANARY_RE.finditer(data):
        found = m.group().decode()
        if any(made.startswith(found) for made in _made):
            _hits.append(f"{where}: {found[:13]}...")
    if any(marker in data for marker in MARKERS):
        for made, forms in _forms.items():
            if any(form in data for form in forms):
                _hits.append(f"{where}: an encoded form (hex/base64/base32) of {made[:13]}...")


def scan_path(path: Path) -> None:
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in paths:
        try:
            scan_text(str(p), p.read_bytes())
        except OSError:
            continue


@pytest.fixture
def canary() -> object:
    """A factory: ``canary()`` returns a fresh ``vpcanary_<hex>`` secret."""
    return make_canary


@pytest.fixture
def canary_watch() -> object:
    """Register a file or directory to be scanned for canaries at session end."""
    return watch


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, content in report.sections:
        scan_text(f"{report.nodeid} [{name}]", content)
    if report.longrepr is not None:
        scan_text(f"{report.nodeid} [failure report]", str(report.longrepr))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: a worker finished (or crashed). Take its canary result; a worker
    without one is a failed check, not a pass (fail closed)."""
    if id(node) in _nodes_done:  # xdist reports a keyboard-interrupted worker twice
        return
    _nodes_done.add(id(node))
    name = str(getattr(getattr(node, "gateway", None), "id", "?"))
    out = getattr(node, "workeroutput", None)
    if not isinstance(out, dict) or _OUT_HITS not in out:
        _hits.append(f"worker {name} ended without its canary check ({error or 'no result'}):"
                     " its leaks are unknown")
        return
    _hits.extend(f"[{name}] {h}" for h in out[_OUT_HITS])
    _worker_made[name] = int(out[_OUT_MADE])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for p in _watched:
        if p.exists():
            scan_path(p)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports and fails the run
        workeroutput[_OUT_HITS] = list(_hits)
        workeroutput[_OUT_MADE] = len(_made)
        return
    if _hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        session.config.stash[_hits_key] = list(_hits)


_hits_key = pytest.StashKey[list[str]]()


def pytest_terminal_summary(
    terminalreporter: object, exitstatus: int, config: pytest.Config
) -> None:
    if hasattr(config, "workeroutput"):
        return
    hits = config.stash.get(_hits_key, [])
    tr = terminalreporter
    if hits:
        tr.section("CANARY LEAKS", sep="!", red=True)  # type: ignore[attr-defined]
        for h in hits:
            tr.write_line(h)  # type: ignore[attr-defined]
        tr.write_line(f"{len(hits)} failed: canary secrets leaked")  # type: ignore[attr-defined]
    else:
        made = len(_made) + sum(_worker_made.values())
        workers = f" ({len(_worker_made)} workers)" if _worker_made else ""
        tr.write_line(f"canary check: {made} canaries, 0 leaks{workers}")  # type: ignore[attr-defined]
