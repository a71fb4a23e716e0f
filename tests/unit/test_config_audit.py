"""``[audit] on_failure`` (issue 15): default ``deny``, ``continue`` only when asked, anything
else refused naming the field and the rule, never the value; the running state follows a
reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config_load import ok, problems
from vaultproxy.core.state import ProxyState
from vaultproxy.files.home import Home


def test_default_is_deny() -> None:
    assert ok("").audit.on_failure == "deny"
    assert ok("[audit]\n").audit.on_failure == "deny"


def test_continue_is_accepted() -> None:
    assert ok('[audit]\non_failure = "continue"\n').audit.on_failure == "continue"


@pytest.mark.parametrize("value", ['"maybe-vpcanary_x"', "true", "1", '["deny"]'])
def test_other_values_are_refused_without_echo(value: str) -> None:
    found = problems(f"[audit]\non_failure = {value}\n")
    assert len(found) == 1 and found[0].startswith("audit.on_failure: ")
    assert "maybe" not in found[0] and "vpcanary" not in found[0]


def test_unknown_audit_key_is_an_error() -> None:
    found = problems('[audit]\nmax_bytes = 5\n')
    assert any(p.startswith("audit.max_bytes") for p in found), found


def test_the_state_applies_the_policy_and_follows_a_reload(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.create()
    st = ProxyState.from_text(home, '[audit]\non_failure = "continue"\n')
    assert st.audit.on_failure == "continue"
    st.reload_text("")
    assert st.audit.on_failure == "deny"
