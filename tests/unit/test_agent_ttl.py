"""Agent token lifetimes (pure): --ttl parsing, expiry, rotation, and the decision's codes —
a right-but-expired token is 407 agent_token_expired, a wrong one agent_auth_required, and a
tunnel's later requests stop when its token is rotated, removed or expires."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import tomlkit

from vaultproxy.access import agents
from vaultproxy.config.load import parse_config
from vaultproxy.core.decide import Facts, decide
from vaultproxy.errors import UsageError
from vaultproxy.loaded.registry import Registry


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400),
     (" 2H ", 7200), ("never", None), ("NEVER", None)],
)
def test_parse_ttl(text: str, seconds: int | None) -> None:
    assert agents.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "24", "h", "-5m", "1.5h", "3w", "1h 30m",
                                  "99999d", "24hx", "x24h"])
def test_parse_ttl_refuses_with_the_fix(text: str) -> None:
    with pytest.raises(UsageError, match="90s, 30m, 24h"):
        agents.parse_ttl(text)


def test_expiry_roundtrips_and_old_records_never_expire() -> None:
    token = agents.new_token()
    rec = agents.make_record("bot", token, ["a"], 1000.0, 60.0)
    assert rec.expires == 1060.0
    back = agents.AgentRecord.decode("bot", rec.encode())
    assert back == rec
    assert not back.expired(1059.9) and back.expired(1060.0) and back.expired(None)
    forever = agents.make_record("bot", token, ["a"], 1000.0, None)
    assert not forever.expired(1e12) and not forever.expired(None)
    # A record written before tokens had lifetimes (no "expires" key) never expires.
    legacy = agents.Secret(
        b'{"created": 5.0, "hash": "' + rec.digest.hex().encode() + b'", "salt": "'
        + rec.salt.hex().encode() + b'", "services": ["a"], "v": 1}'
    )
    assert agents.AgentRecord.decode("bot", legacy).expires is None


def test_rotation_keeps_scopes_and_lifetime_and_drops_the_old_token() -> None:
    old_token, new_token = agents.new_token(), agents.new_token()
    old = agents.make_record("bot", old_token, ["a", "b"], 1000.0, 600.0)
    new = agents.rotated(old, new_token, 5000.0)
    assert new.services == old.services and new.expires == 5600.0
    table = {"bot": new}
    assert agents.verify(table, "bot", new_token.reveal()) is new
    assert agents.verify(table, "bot", old_token.reveal()) is None
    assert agents.rotated(agents.make_record("bot", old_token, ["a"], 0.0), new_token,
                          9.0).expires is None


def test_format_expiry() -> None:
    rec = agents.make_record("bot", agents.new_token(), ["a"], 0.0, 90.0)
    assert agents.format_expiry(rec, 0.0) == "1970-01-01T00:01:30Z (in 1m30s)"
    assert agents.format_expiry(rec, 90.0).endswith("(expired)")
    assert agents.format_expiry(agents.make_record("b", agents.new_token(), ["a"], 0.0),
                                0.0) == "never"


# -- the decision --------------------------------------------------------------------------

REG = Registry.from_config(parse_config(tomlkit.dumps({
    "proxy": {"require_agent_auth": True},
    "service": [{"name": "a", "hosts": ["a.example.com"], "mode": "host_inject",
                 "auth": "bearer"}],
}), Path("/nonexistent")))
TOKEN = agents.new_token()
TABLE = {"bot": agents.make_record("bot", TOKEN, ["a"], 1000.0, 60.0)}


def _basic(token: bytes) -> str:
    return "Basic " + base64.b64encode(b"bot:" + token).decode()


def _connect(token: bytes, now: float | None) -> str | None:
    facts = Facts("connect", "a.example.com", 443, proxy_authorization=_basic(token), now=now)
    return decide(facts, REG, TABLE).code


def test_connect_expired_is_its_own_code_only_for_the_right_token() -> None:
    assert _connect(TOKEN.reveal(), 1030.0) is None
    assert _connect(TOKEN.reveal(), 1060.0) == "agent_token_expired"
    assert _connect(TOKEN.reveal(), None) == "agent_token_expired"  # no clock: fail closed
    # A wrong token never learns whether the agent's token expired.
    assert _connect(b"vpa_" + b"A" * 43, 1030.0) == "agent_auth_required"
    assert _connect(b"vpa_" + b"A" * 43, 1060.0) == "agent_auth_required"


def _in_tunnel(
    table: dict[str, agents.AgentRecord], digest: bytes | None, now: float
) -> str | None:
    facts = Facts("connect", "a.example.com", 443, host_header="a.example.com", agent="bot",
                  agent_digest=digest, now=now)
    return decide(facts, REG, table).code


def test_a_tunnel_ends_with_its_token() -> None:
    proven = decide(Facts("connect", "a.example.com", 443,
                          proxy_authorization=_basic(TOKEN.reveal()), now=1001.0), REG, TABLE)
    assert proven.refusal is None and proven.agent_digest == TABLE["bot"].digest
    digest = proven.agent_digest
    assert _in_tunnel(TABLE, digest, 1030.0) is None
    assert _in_tunnel(TABLE, digest, 1061.0) == "agent_token_expired"
    rotated = {"bot": agents.rotated(TABLE["bot"], agents.new_token(), 1010.0)}
    assert _in_tunnel(rotated, digest, 1030.0) == "agent_auth_required"
    assert _in_tunnel({}, digest, 1030.0) == "agent_auth_required"  # agent rm
    assert _in_tunnel(TABLE, None, 1030.0) == "agent_auth_required"
