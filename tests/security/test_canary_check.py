"""The canary check itself: a leaking test must fail the run (negative twin of every leak test)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.security

_TEST = '''
import pytest

def test_x(canary):
    secret = canary()
    {action}
'''


def _run(pytester: pytest.Pytester, action: str, *args: str) -> pytest.RunResult:
    return _run_source(pytester, _TEST.format(action=action), *args)


def _run_source(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["tests.canary"]')
    pytester.makepyfile(source)
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:anyio", *args)
    finally:
        monkeypatch.undo()


def test_printed_canary_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "print('value', secret)")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CANARY LEAKS*"])


def test_watched_file_with_canary_fails_the_run(pytester: pytest.Pytester) -> None:
    action = (
        "import pathlib, tests.canary as c; p = pathlib.Path('leak.txt'); "
        "p.write_text(secret); c.watch(p.absolute())"
    )
    result = _run(pytester, action)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_truncated_canary_prefix_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "print('url?key=' + secret[:15] + '...')")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_clean_run_passes(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "assert secret.startswith('vpcanary_')")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*canary check: 1 canaries, 0 leaks*"])


ENCODINGS = {
    "hex": "secret.encode().hex()",
    "HEX": "secret.encode().hex().upper()",
    "base64": "base64.b64encode(secret.encode()).decode()",
    "base64url-unpadded": "base64.urlsafe_b64encode(secret.encode()).decode().rstrip('=')",
    "base64-embedded": "base64.b64encode(b'xy' + secret.encode()).decode()",
    "base32": "base64.b32encode(secret.encode()).decode()",
}


def test_an_encoded_canary_in_a_watched_file_fails_the_run(pytester: pytest.Pytester) -> None:
    """A canary that went through hex, base64 or base32 on its way to a watched file (a log
    line dumping a signature input, a debug echo) is found: one file per encoding, each
    reported. Twin: the raw-form pattern alone does not see any of them (the check would
    pass without the encoded forms)."""
    lines = ["import base64, pathlib, tests.canary as c"]
    for i, expr in enumerate(ENCODINGS.values()):
        lines += [f"text = {expr}",
                  "assert not c.CANARY_RE.search(text.encode())",  # the twin
                  f"p = pathlib.Path('leak{i}.txt')",
                  "p.write_text('sig input: ' + text)", "c.watch(p.absolute())"]
    result = _run(pytester, "; ".join(lines))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    for i in range(len(ENCODINGS)):
        result.stdout.fnmatch_lines([f"*leak{i}.txt: an encoded form (hex/base64/base32) of "
                                     "vpcanary_*"])


def test_the_encoded_form_of_another_value_passes(pytester: pytest.Pytester) -> None:
    """Twin: the hex and base64 of a value that is not a canary fail nothing."""
    action = ("import base64, pathlib, tests.canary as c; p = pathlib.Path('ok.txt'); "
              "p.write_text(b'vpcanary_notmade'.hex() + base64.b64encode(b'x' + "
              "secret.encode()[:-4]).decode()); c.watch(p.absolute())")
    result = _run(pytester, action)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_every_encoded_form_of_a_canary_carries_a_marker() -> None:
    """The markers (encoded ``vpcanary_``) are a sound pre-filter: each encoded form of a
    canary contains one, so skipping a buffer without any misses nothing."""
    from tests import canary
    from vaultproxy.values.redact import encoded_forms

    for _ in range(20):
        value = canary.make_canary()
        for form in encoded_forms(value.encode()):
            assert any(m in form for m in canary.MARKERS), form


# --- under pytest-xdist (make test-fast runs -n auto): each worker is its own session --------
# Each worker scans what it made and sends its hits to the controller, which fails the run.
# Without that the controller, which made no canary and watched no file, would pass every run.

_XDIST_TESTS = '''
import os, pathlib, pytest
import tests.canary as c

@pytest.mark.parametrize("i", range(4))
def test_many(canary, i):
    assert canary().startswith("vpcanary_")

def test_leak(canary, tmp_path):
    secret = canary()
    {action}
'''


@pytest.mark.parametrize("action", [
    "print('value', secret)",
    "p = tmp_path / 'leak.txt'; p.write_text(secret); c.watch(p)",
    "p = tmp_path / 'leak.txt'; p.write_text(secret.encode().hex()); c.watch(p)",
], ids=["printed", "watched-file", "watched-file-hex"])
def test_a_leak_in_an_xdist_worker_fails_the_run(pytester: pytest.Pytester, action: str) -> None:
    result = _run_source(pytester, _XDIST_TESTS.format(action=action), "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*CANARY LEAKS*", "[[]gw[01][]] *test_leak*vpcanary_*",
                                 "* failed: canary secrets leaked"])
    result.assert_outcomes(passed=5)  # every test passed: the leak alone fails the run


def test_a_clean_xdist_run_passes_and_counts_every_workers_canaries(
    pytester: pytest.Pytester,
) -> None:
    result = _run_source(pytester, _XDIST_TESTS.format(action="pass"), "-n", "2")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*canary check: 5 canaries, 0 leaks (2 workers)*"])


def test_a_crashed_xdist_worker_fails_the_canary_check(pytester: pytest.Pytester) -> None:
    """Fail closed: a worker that dies before its session end never sends its result, so its
    leaks are unknown: that is a failed check, whatever else the run reports."""
    action = "os._exit(3)"
    result = _run_source(pytester, _XDIST_TESTS.format(action=action), "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*CANARY LEAKS*",
                                 "worker gw* ended without its canary check*unknown"])
