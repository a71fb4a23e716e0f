"""Agent tokens, stored hashes, verification and Proxy-Authorization parsing (pure)."""

from __future__ import annotations

import base64

import pytest

from vaultproxy.access import agents
from vaultproxy.errors import UsageError
from vaultproxy.secret import Secret


def test_token_shape_and_uniqueness() -> None:
    a, b = agents.new_token(), agents.new_token()
    assert agents.TOKEN_RE.fullmatch(a.reveal_str())
    assert a.reveal() != b.reveal()


def test_record_roundtrip_holds_no_token() -> None:
    token = agents.new_token()
    rec = agents.make_record("bot", token, ["a", "b"], 123.0)
    stored = rec.encode()
    assert token.reveal() not in stored.reveal()
    back = agents.AgentRecord.decode("bot", stored)
    assert back == rec
    assert back.allows("a") and not back.allows("c")
    assert token.reveal_str() not in repr(rec)


def test_verify_accepts_only_the_right_token_and_name() -> None:
    token = agents.new_token()
    table = {"bot": agents.make_record("bot", token, ["a"], 0.0)}
    assert agents.verify(table, "bot", token.reveal()) is table["bot"]
    assert agents.verify(table, "bot", token.reveal()[:-1] + b"x") is None
    assert agents.verify(table, "bot", b"") is None
    assert agents.verify(table, "other", token.reveal()) is None


def test_same_token_two_agents_gives_different_hashes() -> None:
    token = agents.new_token()
    a = agents.make_record("a", token, [], 0.0)
    b = agents.make_record("b", token, [], 0.0)
    assert a.digest != b.digest and a.salt != b.salt


def test_load_records_skips_malformed_and_foreign() -> None:
    good = agents.make_record("bot", agents.new_token(), ["a"], 0.0)
    out = agents.load_records(
        [("agent:bot", good.encode()), ("agent:bad", Secret(b"{not json")),
         ("other:x", good.encode())]
    )
    assert list(out) == ["bot"]


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        (_basic(b"bot:tok:en"), ("bot", b"tok:en")),
        ("basic " + base64.b64encode(b"bot:t").decode(), ("bot", b"t")),
        (_basic(b"no-colon"), None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic ***", None),
        (_basic("b\u00f6t:t".encode()), None),
    ],
)
def test_parse_proxy_authorization(header: str | None, expected: tuple[str, bytes] | None) -> None:
    creds = agents.parse_proxy_authorization(header)
    if expected is None:
        assert creds is None
    else:
        assert creds is not None and (creds.name, creds.token) == expected
        assert repr(creds.token) not in repr(creds)


@pytest.mark.parametrize("name", ["", "Bot", "-x", "a" * 65, "a b", "a:b"])
def test_bad_agent_names(name: str) -> None:
    with pytest.raises(UsageError):
        agents.check_name(name)


def test_parse_services() -> None:
    assert agents.parse_services(" a, b,,a ") == ["a", "b"]
