"""Every start path says the same ``SECURITY:`` lines for the same home: ``vaultproxy run``,
``vaultproxy run --workers 2`` (the supervisor, once for all workers) and
``mitmdump -s addons/vaultproxy.py`` (which said none of them before the lines became one
pure function of the config, engine/lifecycle.py).

The expected lines are computed from the home's config by that function and, so the
function itself cannot quietly return nothing, must include the literal lines for each weak
setting of the home. Twin: the same function says nothing for a config without them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess
from tests.integration.test_mitmdump import Mitmdump
from vaultproxy.config.load import parse_config
from vaultproxy.engine.lifecycle import security_warnings

pytestmark = pytest.mark.integration

WEAK = """
[proxy]
passthrough_allow = ["127.0.0.0/8"]

[audit]
on_failure = "continue"

[[service]]
name = "weak"
hosts = ["weak.api.test"]
mode = "placeholder"
auth = "bearer"
substitute_in = ["auth", "header", "query"]
insecure_tls = true
allow_range = true
allow_loopback = true
connect_to = "127.0.0.1:9"
"""

LITERAL = [
    "SECURITY: service weak has insecure_tls = true: upstream TLS is NOT verified",
    "SECURITY: service weak may reach loopback addresses (allow_loopback)",
    "SECURITY: service weak substitutes its secret in any request header (the agent chooses",
    "SECURITY: service weak substitutes its secret in any query parameter (the agent",
    "SECURITY: service weak keeps Range requests (allow_range): partial responses can slice "
    "a reflected secret past the redactor",
    'SECURITY: [audit] on_failure = "continue"',
    "SECURITY: passthrough_allow lets unregistered traffic reach listed private addresses",
]


def _run(home: ProxyHome, base: Path) -> str:
    p = ProxyProcess.start(home, args=("--workers", "1"))
    p.stop()
    return p.output()


def _workers(home: ProxyHome, base: Path) -> str:
    p = ProxyProcess.start(home, args=("--workers", "2"))
    p.stop()
    return p.output()


def _mitmdump(home: ProxyHome, base: Path) -> str:
    script = base / "vaultproxy.py"
    shutil.copy(REPO / "addons" / "vaultproxy.py", script)
    md = Mitmdump(home, script, base / "mitmdump.log")  # (its admin API on port 0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "vaultproxy admin API" not in md.output():
        time.sleep(0.1)
    md.stop()
    return md.output()


PATHS: dict[str, Callable[[ProxyHome, Path], str]] = {
    "run": _run, "run-workers": _workers, "mitmdump": _mitmdump,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_start_path_logs_the_same_security_lines(
    tmp_path_factory: pytest.TempPathFactory, path: str
) -> None:
    base = tmp_path_factory.mktemp(f"warn-{path}")
    canary.watch(base)
    home = ProxyHome.create(base, WEAK, {"weak": make_canary()})
    config = parse_config(WEAK, home.path)
    expected = security_warnings(config, ["127.0.0.1"], "127.0.0.1")
    for line in LITERAL:
        assert any(w.startswith(line) for w in expected), line
    out = PATHS[path](home, base)
    said = [ln[ln.index("SECURITY: "):] for ln in out.splitlines() if "SECURITY: " in ln]
    for line in expected:
        assert said.count(line) == 1, f"{path}: {line!r} said {said.count(line)} times\n{out}"


def test_a_config_without_weak_settings_says_nothing() -> None:
    clean = parse_config(
        '[[service]]\nname = "ok"\nhosts = ["ok.api.test"]\nmode = "host_inject"\n'
        'auth = "bearer"\n', Path("/nonexistent"))
    assert security_warnings(clean, ["127.0.0.1", "::1"], "127.0.0.1") == []
    assert security_warnings(clean, [""], None) == [
        "SECURITY: the proxy listens on every interface, not loopback: other hosts can use it"
    ]
