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


def _run(pytester: pytest.Pytester, action: str) -> pytest.RunResult:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["tests.canary"]')
    pytester.makepyfile(_TEST.format(action=action))
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:anyio")
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
