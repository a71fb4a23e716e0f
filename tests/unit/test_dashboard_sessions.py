"""Dashboard logins and sessions with an injected clock; the plot and the SECURITY: line."""

from __future__ import annotations

from collections import Counter

from vaultproxy.dashboard import views
from vaultproxy.dashboard.server import DashboardServer
from vaultproxy.dashboard.sessions import Sessions, csrf_matches


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_token_works_once_and_expires() -> None:
    clock = Clock()
    s = Sessions(clock, login_ttl=120, session_ttl=3600)
    token = s.mint_login()
    got = s.exchange(token)
    assert got is not None
    assert s.exchange(token) is None  # spent
    late = s.mint_login()
    clock.now += 121
    assert s.exchange(late) is None  # expired
    assert s.exchange("made-up") is None


def test_session_expires_and_ends() -> None:
    clock = Clock()
    s = Sessions(clock, login_ttl=120, session_ttl=3600)
    got = s.exchange(s.mint_login())
    assert got is not None
    sid, session = got
    assert s.get(sid) is session
    assert s.get(sid + "x") is None and s.get(None) is None
    clock.now += 3601
    assert s.get(sid) is None
    got2 = s.exchange(s.mint_login())
    assert got2 is not None
    s.end(got2[0])
    assert s.get(got2[0]) is None


def test_csrf_matches_only_the_session_token() -> None:
    got = Sessions().exchange(Sessions().mint_login())
    assert got is None  # a token of another table
    s = Sessions()
    got = s.exchange(s.mint_login())
    assert got is not None
    session = got[1]
    assert csrf_matches(session, session.csrf)
    assert not csrf_matches(session, None)
    assert not csrf_matches(session, "")
    assert not csrf_matches(session, session.csrf + "x")


def test_non_loopback_bind_warns() -> None:
    assert DashboardServer(("127.0.0.1", 0), lambda: 1).warnings() == []
    (line,) = DashboardServer(("0.0.0.0", 0), lambda: 1).warnings()  # noqa: S104
    assert line.startswith("SECURITY: the dashboard listens on 0.0.0.0")


def test_plot_escapes_names_and_scales() -> None:
    svg = str(views.plot([Counter({"<b>": 2}), Counter({"ok": 4})], "t"))
    assert "<b>" not in svg
    assert "&lt;b&gt;" in svg and "max 4/min" in svg
    assert svg.count("<rect") == 2 + 2  # two bars, two legend swatches
