"""``inject_head``'s host_inject shortcut (session 15, ``inject7``) answers exactly as the code
it replaces, on seeded input; that code is kept here as the reference.

* A host_inject request to a bearer, header or basic service with no field its strip would
  remove takes ``sent`` plus the one field ``made_for`` made of the shared keystore entry
  (``SharedEntry.made``, once per entry and service) instead of ``prepare_request``, and
  hands ``header_names`` the injected tuple's names (``names_with``);
* everything else (placeholder mode, a field to strip, a minted credential, another auth
  type, an entry whose field cannot be made) runs ``prepare_request`` as before.

Compared over seeded requests, interleaved with every kind of change to the keystore and the
services (a secret written, a field set, an entry removed, a refresh, a lock and an unlock, a
reload, two services on one entry): the headers, the request target, the answer, the error,
and the names the memo hands the next asker.

Twins (SECURITY 68): the made field is dropped on every change (each shared entry handed out
before it holds none after), it is never kept when making it raises, and no repr shows it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from tests.canary import make_canary
from vaultproxy.core import pipeline
from vaultproxy.core.decide import Plan
from vaultproxy.core.pipeline import Injected, header_value, inject_head
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import BodyTooLarge, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.inject import names as names_mod
from vaultproxy.inject import prepare_request
from vaultproxy.inject.minted import credential
from vaultproxy.inject.request import Made, made_for
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.keystore.entries import SharedEntry
from vaultproxy.mint.cache import Issued
from vaultproxy.net.decoding import limit_accept_encoding
from vaultproxy.secret import Secret

# -- the reference: inject_head before inject7 ---------------------------------------------


def _inject_head_reference(
    st: ProxyState, req: http.Request, plan: Plan, minted: Issued | None
) -> Injected:
    service = plan.service
    entry = st.session.entry_for(service)
    secret, fields = entry.value, entry.fields
    if minted is not None:
        secret, fields = credential(minted, service.auth)
    injected = prepare_request(req, service, secret, fields, st.snapshot.index).injected
    headers = req.data.headers
    offered = header_value(headers.fields, b"accept-encoding")
    if offered is not None:
        limit_accept_encoding(headers, offered)
    if plan.body == "sign":
        wait = not pipeline.sign_at_head(req, service, entry.fields)
        injected = injected or not wait
    else:
        wait = plan.body == "substitute"
    if wait:
        length = req.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > plan.max_body:
            raise BodyTooLarge()
    return Injected(entry, injected, wait)


def _header_value_reference(fields: tuple[tuple[bytes, bytes], ...], name: bytes
                            ) -> str | None:
    """``header_value`` before inject7: every value through one comprehension and a join."""
    names = names_mod.header_names(fields)
    if name not in names:
        return None
    return ", ".join([fields[i][1].decode("utf-8", "surrogateescape")
                      for i, n in enumerate(names) if n == name])


# -- seeded input --------------------------------------------------------------------------

SERVICES = (
    '[[service]]\nname = "bear"\nhosts = ["bear.test"]\nmode = "host_inject"\n'
    'auth = "bearer"\n'
    '[[service]]\nname = "head"\nhosts = ["head.test"]\nmode = "host_inject"\n'
    'auth = "header"\nheader_name = "X-Api-Key"\nprefix = "Key "\n'
    '[[service]]\nname = "under"\nhosts = ["under.test"]\nmode = "host_inject"\n'
    'auth = "header"\nheader_name = "x_token"\n'
    '[[service]]\nname = "bas"\nhosts = ["bas.test"]\nmode = "host_inject"\n'
    'auth = "basic"\n'
    # a second service on bear's entry: the made field is per entry *and* service
    '[[service]]\nname = "twin"\nhosts = ["twin.test"]\nmode = "host_inject"\n'
    'auth = "header"\nheader_name = "Authorization"\nsecret = "bear"\n'
    '[[service]]\nname = "ph"\nhosts = ["ph.test"]\nmode = "placeholder"\n'
    'auth = "bearer"\nsubstitute_in = ["auth", "header", "query"]\n'
    # its entry has fields only: bearer has no value to inject (SecretMissing, not cached)
    '[[service]]\nname = "novalue"\nhosts = ["novalue.test"]\nmode = "host_inject"\n'
    'auth = "bearer"\n'
    '[[service]]\nname = "gone"\nhosts = ["gone.test"]\nmode = "host_inject"\n'
    'auth = "bearer"\n'
)

NAMES = [b"Authorization", b"authorization", b"X-Api-Key", b"x_api_key", b"X-Token",
         b"x_token", b"Cookie", b"Accept", b"Accept-Encoding", b"accept-encoding",
         b"Proxy-Authorization", b"Host", b"Content-Length", b"X-Plex-Token", b"User-Agent"]
VALUES = [b"Bearer __vault.ph__", b"v", b"__vault.ph__", b"", b"gzip, br, zstd", b"identity",
          b"a%20b", b"Basic dXNlcjpwYXNz", b"__vault.nobody__", b"x+y", b"7", b"99999",
          b"__vault.bear__", b"basic", b"text/plain"]
CLEAN_NAMES = [b"Host", b"Accept", b"Accept-Encoding", b"accept-encoding", b"User-Agent"]
CLEAN_VALUES = [b"v", b"identity", b"gzip, br, zstd", b"text/plain", b"bear.test", b""]
PATHS = [b"/x", b"/x?q=1", b"/x?q=__vault.ph__", b"/y?a=%41", b"/z?", b"/__vault.bas__"]


def _home(tmp_path: Path) -> tuple[ProxyState, Keystore]:
    home = Home(tmp_path / "home")
    home.create()
    home.services.write_text(SERVICES)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    for name in ("bear", "head", "under", "ph", "gone"):
        ks.set_value(name, Secret(make_canary()))
    ks.set_field("bas", "username", Secret("user"))
    ks.set_field("bas", "password", Secret(make_canary()))
    ks.set_field("novalue", "password", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    return st, ks


def _request(fields: tuple[tuple[bytes, bytes], ...], path: bytes) -> http.Request:
    req = tutils.treq(path=path, headers=http.Headers())
    req.headers.fields = fields
    return req


def _outcome(st: ProxyState, fn: object, req: http.Request, plan: Plan) -> object:
    try:
        done = fn(st, req, plan, None)  # type: ignore[operator]
    except VaultproxyError as e:
        return ("raised", type(e).__name__, str(e))
    fields = req.data.headers.fields
    return ("done", type(fields).__name__, fields, req.data.path, id(done.entry),
            done.injected, done.wait_body)


def _edit(rng: random.Random, st: ProxyState, ks: Keystore, seen: list[SharedEntry]
          ) -> Keystore:
    """One seeded change to the keystore or the services; the shared entries it must have
    dropped hold no made field any more (the twin). Returns the keystore served after it (a
    lock wipes the one it had: the unlock opens the file again)."""
    op = rng.randrange(9)
    name = rng.choice(["bear", "head", "under", "bas", "gone"])
    of_name = [e for e in seen if e.name == name]
    if op == 0:
        ks.set_value(name, Secret(make_canary()))
    elif op == 1:  # the same value again: a write all the same
        entry = ks.get(name)
        if entry is None or entry.value is None:
            return ks
        ks.set_value(name, Secret(entry.value.reveal()))
    elif op == 2:
        ks.set_field(name, rng.choice(["username", "password", "x"]), Secret(make_canary()))
    elif op == 3:
        ks.remove(name)
        if rng.random() < 0.7:
            ks.set_value(name, Secret(make_canary()))
    elif op == 4:  # another process writes the file; the proxy re-reads it
        ks.save()
        other = Keystore.open(ks.path, Secret("pw"))
        other.set_value(name, Secret(make_canary()))
        other.save()
        assert st.refresh_keystore()
        of_name = list(seen)
    elif op == 5:
        ks.save()  # (an unlock reads the file: what was only in memory is gone)
        st.lock()
        assert all(e.made is None for e in seen)
        ks = Keystore.open(ks.path, Secret("pw"))
        st.install_keystore(ks)
        of_name = list(seen)
    elif op == 6:
        st.reload_text(SERVICES)  # new Service objects, the same text
        of_name = list(seen)
    elif op == 7:
        st.secrets_changed()
        of_name = list(seen)
    else:
        return ks
    assert all(e.made is None for e in of_name), op
    return ks


def test_inject_head_is_the_reference_over_seeded_requests_and_edits(tmp_path: Path) -> None:
    st, ks = _home(tmp_path)
    rng = random.Random(71)
    seen: list[SharedEntry] = []
    fast = slow = raised = 0
    for i in range(2000):
        if rng.random() < 0.03:
            ks = _edit(rng, st, ks, seen)
        service = rng.choice(list(st.registry.services))
        fields = tuple((rng.choice(NAMES), rng.choice(VALUES))
                       for _ in range(rng.choice([0, 1, 2, 2, 3, 3, 4, 6])))
        if rng.random() < 0.5:  # the common request: nothing to strip, nothing to trip
            fields = tuple((rng.choice(CLEAN_NAMES), rng.choice(CLEAN_VALUES))
                           for _ in range(rng.choice([0, 1, 2, 3, 5])))
        path = rng.choice(PATHS)
        body = rng.choice(["stream", "stream", "stream", "substitute"])
        plan = Plan(service, body, rng.choice([1 << 20, 10]))  # type: ignore[arg-type]
        want = _outcome(st, _inject_head_reference, _request(fields, path), plan)
        req = _request(fields, path)
        if rng.random() < 0.8:  # as the stages before it leave the memo (Inject asks first)
            names_mod.header_names(fields)
        got = _outcome(st, inject_head, req, plan)
        assert got == want, (i, service.name)
        if got[0] == "raised":
            raised += 1
            continue
        after = req.data.headers.fields
        # what the memo hands the next asker is what header_names would compute
        assert names_mod.header_names(after) == tuple(k.lower() for k, _ in after)
        shared = ks._shared.get(service.secret or service.name)
        assert shared is not None
        made = shared[5].made
        if made is not None and made.service is service and after[-1] is made.field:
            fast += 1
            seen.append(shared[5])
        else:
            slow += 1
    assert fast > 400 and slow > 300 and raised > 300, (fast, slow, raised)


def test_the_made_field_is_the_strategy_s_and_only_for_one_field_types(tmp_path: Path) -> None:
    st, ks = _home(tmp_path)
    by_name = {s.name: s for s in st.registry.services}
    for name in ("bear", "head", "under", "bas", "twin"):
        service = by_name[name]
        entry = st.session.entry_for(service)
        assert isinstance(entry, SharedEntry)
        made = made_for(entry, service)
        assert made is not None and entry.made is made
        assert made_for(entry, service) is made  # kept
        req = _request((), b"/")
        prepare_request(req, service, entry.value, entry.fields, st.snapshot.index)
        assert req.data.headers.fields == (made.field,)
        assert made.lname == made.field[0].lower()
    # twin and bear share one entry: each asks for its own field, the other's is replaced
    bear, twin = by_name["bear"], by_name["twin"]
    entry = st.session.entry_for(bear)
    assert made_for(entry, bear) is not None and entry.made.service is bear
    assert made_for(entry, twin) is not None and entry.made.service is twin
    # placeholder mode, and an entry the strategy cannot inject from: nothing made or kept
    for name in ("ph", "novalue"):
        entry = st.session.entry_for(by_name[name])
        assert isinstance(entry, SharedEntry)
        assert made_for(entry, by_name[name]) is None and entry.made is None


def test_a_field_that_cannot_be_made_raises_as_before(tmp_path: Path) -> None:
    st, _ = _home(tmp_path)
    service = next(s for s in st.registry.services if s.name == "novalue")
    for fields in [(), ((b"Accept", b"v"),), ((b"Cookie", b"__vault.ph__"),)]:
        want = _outcome(st, _inject_head_reference, _request(fields, b"/"),
                        Plan(service, "stream", 1 << 20))
        got = _outcome(st, inject_head, _request(fields, b"/"), Plan(service, "stream", 1 << 20))
        assert got == want and got[0] == "raised"
    entry = st.session.entry_for(service)
    assert isinstance(entry, SharedEntry) and entry.made is None


def test_a_written_secret_is_injected_at_once(tmp_path: Path) -> None:
    """The negative twin of the kept field: after a write the old credential never goes."""
    st, ks = _home(tmp_path)
    service = next(s for s in st.registry.services if s.name == "bear")
    plan = Plan(service, "stream", 1 << 20)
    for _ in range(5):
        fresh = make_canary()
        ks.set_value("bear", Secret(fresh))
        for _ in range(2):
            req = _request(((b"Host", b"bear.test"),), b"/")
            inject_head(st, req, plan, None)
            assert req.data.headers.fields[-1] == (b"Authorization", b"Bearer " + fresh.encode())
    st.lock()
    with pytest.raises(VaultproxyError):
        inject_head(st, _request((), b"/"), plan, None)


def test_no_repr_shows_the_made_field(tmp_path: Path) -> None:
    st, _ = _home(tmp_path)
    for service in st.registry.services:
        if service.name in ("gone",):
            continue
        try:
            done = inject_head(st, _request(((b"Host", b"h"),), b"/"),
                               Plan(service, "stream", 1 << 20), None)
        except VaultproxyError:
            continue
        entry = done.entry
        shown = repr(entry) + repr(done) + repr(vars(entry)) + str(entry)
        if isinstance(entry, SharedEntry) and entry.made is not None:
            assert isinstance(entry.made, Made)
            shown += repr(entry.made) + str(entry.made)
        assert "vpcanary" not in shown
        assert b"vpcanary" not in shown.encode()
    # the made field cannot be set as an attribute (only ``keep_made``)
    entry = st.session.entry_for(next(iter(st.registry.services)))
    with pytest.raises(AttributeError):
        entry.made = None


def test_header_value_is_the_comprehension_it_replaces() -> None:
    rng = random.Random(73)
    wanted = [b"accept-encoding", b"host", b"authorization", b"x-token", b"absent"]
    raw = [b"identity", b"gzip", b"", b"\xff\xfe", b"caf\xc3\xa9", b"a, b", b" x "]
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(4000):
        fields = tuple((rng.choice(NAMES + [b"X-TOKEN", b"HOST"]), rng.choice(raw))
                       for _ in range(rng.randrange(7)))
        name = rng.choice(wanted)
        if rng.random() < 0.5:
            names_mod.header_names(fields)  # the memo holds them, or another tuple's
        got = header_value(fields, name)
        assert got == _header_value_reference(fields, name), (fields, name)
        counts[min(2, [k.lower() for k, _ in fields].count(name))] += 1
    assert min(counts.values()) > 100, counts


def test_a_field_that_is_no_tuple_is_scanned_as_before(tmp_path: Path) -> None:
    """The shortcut's inline ``_pieces``: a field that is a list (no tuple ``sum``) takes
    ``_pieces``' general path; the same answer and the same error as the reference."""
    st, _ = _home(tmp_path)
    outcomes = set()
    for service in st.registry.services:
        for value in (b"v", b"__vault.nobody__", b"a%41"):
            fields = ((b"Host", b"h"), [b"Accept", value])  # type: ignore[list-item]
            plan = Plan(service, "stream", 1 << 20)
            want = _outcome(st, _inject_head_reference, _request(fields, b"/"), plan)
            got = _outcome(st, inject_head, _request(fields, b"/"), plan)
            assert got == want, (service.name, value)
            outcomes.add(got[0])
    assert outcomes == {"done", "raised"}
