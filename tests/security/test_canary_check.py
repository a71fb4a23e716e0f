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
