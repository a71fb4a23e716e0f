"""access/approvals.py and ratelimit.py: the state machine and the bucket, on a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from vaultproxy.access.agents import entry_name, make_record, new_token
from vaultproxy.access.approvals import (
    MAX_PENDING_PER_AGENT,
    AlreadyDecided,
    ApprovalBook,
    Ticket,
    TooManyPending,
    UnknownApproval,
)
from vaultproxy.access.ratelimit import Rate, RateBuckets, RateSyntax, parse_rate, retry_after
from vaultproxy.core.state import ProxyState
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ticket(agent: str = "alice", rule: str = "POST /x/*") -> Ticket:
    return Ticket(agent, "gh", "POST", "api.github.com", "/x/1", 12, rule)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock: Clock) -> ApprovalBook:
    ids = (f"id{i}" for i in itertools.count())
    return ApprovalBook(clock, lambda: next(ids))


def test_approve_once_while_held_makes_no_grant(book: ApprovalBook) -> None:
    a = book.open(ticket(), 60)
    done = book.decide(a.id, "approve", "cli", None, 600)
    assert done.state == "approved" and done.grant_until is None
    assert not book.use_grant(ticket())


def test_grant_admits_the_same_agent_service_rule_until_it_ends(
    book: ApprovalBook, clock: Clock
) -> None:
    a = book.open(ticket(), 60)
    book.decide(a.id, "approve", "api", 30, 600)
    assert book.use_grant(ticket()) and book.use_grant(ticket())  # any number of times
    assert not book.use_grant(ticket(agent="bob"))  # another agent
    assert not book.use_grant(ticket(rule="default"))  # another rule
    clock.now += 30
    assert not book.use_grant(ticket())  # not after


def test_late_approval_of_a_timed_out_request_is_a_one_use_grant(
    book: ApprovalBook, clock: Clock
) -> None:
    a = book.open(ticket(), 60)
    assert book.time_out(a.id) is not None
    done = book.decide(a.id, "approve", "cli", None, 20)
    assert done.grant_until == clock.now + 20
    assert book.use_grant(ticket())
    assert not book.use_grant(ticket())  # spent


def test_abandoned_hold_approved_later_is_a_grant(book: ApprovalBook) -> None:
    a = book.open(ticket(), 60)
    book.abandon(a.id)  # its worker went away
    assert book.decide(a.id, "approve", "api", None, 20).grant_until is not None
    assert book.use_grant(ticket())


def test_decisions_are_final_and_ids_checked(book: ApprovalBook) -> None:
    a = book.open(ticket(), 60)
    book.decide(a.id, "deny", "api", None, 600)
    with pytest.raises(AlreadyDecided):
        book.decide(a.id, "approve", "api", None, 600)
    with pytest.raises(UnknownApproval):
        book.decide("nope", "approve", "api", None, 600)
    assert book.time_out(a.id) is None  # a decided one does not time out


def test_decided_approvals_are_dropped_after_an_hour(book: ApprovalBook, clock: Clock) -> None:
    a = book.open(ticket(), 60)
    book.decide(a.id, "deny", "api", None, 600)
    clock.now += 3601
    assert book.listed() == []


def test_summary_never_holds_more_than_the_ticket() -> None:
    s = ticket().summary("abcd")
    assert "alice" in s and "POST https://api.github.com/x/1" in s and "12 bytes" in s


@pytest.mark.parametrize(("text", "count", "period"), [
    ("120/min", 120, 60.0), ("5/s", 5, 1.0), ("1/hour", 1, 3600.0), (" 10 / day ", 10, 86400.0),
])
def test_parse_rate(text: str, count: int, period: float) -> None:
    assert parse_rate(text) == Rate(count, period)


@pytest.mark.parametrize("text", ["", "120", "120/fortnight", "0/min", "-1/min", "x/min"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(RateSyntax):
        parse_rate(text)


def test_bucket_n_then_refuse_with_retry_after_then_refill() -> None:
    clock = Clock()
    buckets = RateBuckets(clock)
    rate = Rate(3, 60.0)
    assert [buckets.take("a", "s", rate) for _ in range(3)] == [None] * 3
    wait = buckets.take("a", "s", rate)
    assert wait is not None and retry_after(wait) == 20
    assert buckets.take("b", "s", rate) is None  # per agent
    assert buckets.take("a", "other", rate) is None  # per service
    clock.now += 20
    assert buckets.take("a", "s", rate) is None


def test_one_agents_flood_does_not_crowd_out_another(book: ApprovalBook) -> None:
    """An agent holding MAX_PENDING_PER_AGENT requests gets no more held (429 upstream of
    this), while another agent's request is still put to the operator (twin)."""
    for _ in range(MAX_PENDING_PER_AGENT):
        book.open(ticket("flood"), 60)
    with pytest.raises(TooManyPending, match="of this agent"):
        book.open(ticket("flood"), 60)
    assert book.open(ticket("alice"), 60).state == "pending"


def test_a_grant_is_bound_to_the_agents_identity_not_its_name(book: ApprovalBook) -> None:
    """``agent rm bot`` + ``agent add bot`` makes another identity (a new token): the old
    bot's grant does not admit it. Twin: the same identity is admitted."""
    old = replace(ticket(agent="bot"), agent_id="11" * 16)
    a = book.open(old, 60)
    book.decide(a.id, "approve", "api", 300, 600)
    assert book.use_grant(old)  # twin
    assert not book.use_grant(replace(old, agent_id="22" * 16))  # the new "bot"
    assert not book.use_grant(replace(old, agent_id=""))  # nor a claimless caller


def test_keep_agents_drops_the_grants_of_removed_or_replaced_agents(book: ApprovalBook) -> None:
    grants = {n: replace(ticket(agent=n), agent_id=i) for n, i in
              (("gone", "aa"), ("reborn", "bb"), ("kept", "cc"))}
    anon = ticket(agent=None)  # type: ignore[arg-type]
    for t in [*grants.values(), anon]:
        book.decide(book.open(t, 60).id, "approve", "api", 300, 600)
    assert book.keep_agents({"reborn": "b2", "kept": "cc"}) == 2
    assert not book.use_grant(grants["gone"]) and not book.use_grant(grants["reborn"])
    assert book.use_grant(grants["kept"]) and book.use_grant(anon)  # twins: untouched


@pytest.mark.parametrize(("reader", "readable"), [
    (("bot", "aa", ""), True),  # the agent that opened it
    (("bot", "bb", ""), False),  # a later agent of the same name
    (("eve", "aa", ""), False),
    ((None, "", ""), False),  # an anonymous caller without a session
    ((None, "", "mcp-session:s1"), False),  # ... or with one
])
def test_an_agents_approval_is_readable_by_that_agent_only(
    reader: tuple[str | None, str, str], readable: bool
) -> None:
    t = replace(ticket(agent="bot"), agent_id="aa")
    assert t.readable_by(*reader) is readable


@pytest.mark.parametrize(("reader", "readable"), [
    ((None, "", "mcp-session:s1"), True),  # the anonymous session that opened it
    ((None, "", "mcp-session:s2"), False),  # another anonymous session
    ((None, "", ""), False),
    (("bot", "aa", "mcp-session:s1"), False),  # an agent
])
def test_an_anonymous_approval_is_readable_by_its_own_session_only(
    reader: tuple[str | None, str, str], readable: bool
) -> None:
    t = replace(ticket(agent=None), owner="mcp-session:s1")  # type: ignore[arg-type]
    assert t.readable_by(*reader) is readable
    assert not replace(t, owner="").readable_by(None, "", "")  # a proxied one: nobody's


@pytest.mark.usefixtures("cheap_kdf")  # not a KDF test: saves keep the cheap parameters
def test_a_keystore_re_read_drops_the_grants_of_a_removed_agent(tmp_path: Path) -> None:
    """The wiring behind ``agent rm``: the owner's desk drops a removed agent's grants as
    soon as its ProxyState re-reads the keystore (what ``agent rm`` asks a running proxy to
    do). Twin: the grant admitted the agent before, and another agent's grant survives."""
    home = Home(tmp_path / "home")
    home.path.mkdir(mode=0o700)
    (home.path / "services.toml").write_text("")
    st = ProxyState.load(home)
    ks = Keystore.create(home.keystore, Secret("password-for-tests"),
                         KdfParams(time_cost=1, memory_kib=8, parallelism=1))
    records = {n: make_record(n, new_token(), ["gh"], 1000.0) for n in ("gone", "kept")}
    for name, record in records.items():
        ks.set_internal(entry_name(name), record.encode())
    ks.save()
    st.install_keystore(ks)
    book = st.access_desk().book  # type: ignore[attr-defined]
    tickets = {n: replace(ticket(agent=n), agent_id=r.identity) for n, r in records.items()}
    for t in tickets.values():
        book.decide(book.open(t, 60).id, "approve", "api", 300, 600)
    assert book.use_grant(tickets["gone"])  # twin: granted before the removal
    ks.remove_internal(entry_name("gone"))
    ks.save()
    st.session.secrets_changed()
    st.install_keystore(ks)  # the re-read: on_change reaches the desk
    assert not book.use_grant(tickets["gone"])
    assert book.use_grant(tickets["kept"])
