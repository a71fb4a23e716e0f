"""The hook phases' per-request shortcuts of session 13 (``stages4``) answer exactly as the
code they replace, on seeded input; the code before each shortcut is kept here as the
reference.

* three regular expressions a request ran, each a ~2k-instruction call before it read a
  byte, now byte tests: ``header_safe``'s ``[\\r\\n\\x00]`` search (three memchr), the
  response gate's whole-value ``Content-Length`` match (``bytes.isdigit`` and no leading
  zero) and ``check_headers``' values search (three memchr; compared with its regular
  expression by tests/unit/test_speed_stages3.py's reference);
* ``Keystore.get_shared`` (``Session.entry_for``): one read-only copy while the stored entry
  is as it was, against ``get``'s fresh copy after every kind of edit; the keystore's
  entries are unchanged by seeded requests through the whole injection; a shared entry
  refuses every write (the negative twin: nobody can change what another reader reads);
* Identify calling ``take_proxy_authorization`` only when a Proxy-Authorization field is
  there or a honeytoken is configured, against calling it always.
Twins: each side of each comparison is reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from vaultproxy.config.models import Service
from vaultproxy.core.decide import Decision, Plan
from vaultproxy.core.pipeline import inject_head
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import SecretMissing, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.inject import request as inject_request
from vaultproxy.inject.strategy import header_safe
from vaultproxy.keystore import Entry, KdfParams, Keystore
from vaultproxy.keystore.entries import SharedEntry
from vaultproxy.secret import Secret
from vaultproxy.stages import Runtime, access
from vaultproxy.stages import response_gate as gate
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import FlowRecord, record_of
from vaultproxy.stages.guard import deny
from vaultproxy.stages.identify import Identify, _in_tunnel
from vaultproxy.values.honeytokens import HoneytokenIndex
from vaultproxy.values.redact import Redactor

SERVICE = Service(name="svc", hosts=("svc.test",), mode="host_inject", auth="bearer")

# -- the regular expressions ----------------------------------------------------------------

_HEADER_UNSAFE_RE = re.compile(rb"[\r\n\x00]")  # header_safe's, before stages4
_CONTENT_LENGTH = re.compile(rb"(?:0|[1-9][0-9]*)")  # the response gate's, before stages4


def _header_safe_reference(service: Service, secret: bytes) -> bytes:
    if _HEADER_UNSAFE_RE.search(secret):
        raise SecretMissing(
            f"service {service.name!r}: the secret holds CR, LF or NUL and cannot go in a header"
        )
    return secret


def _outcome(fn: Any, *args: Any) -> object:
    try:
        return ("ok", fn(*args))
    except VaultproxyError as e:
        return (type(e), str(e))


def _safe(fn: Any, secret: bytes | bytearray) -> object:
    """``fn``'s outcome, what it returns as its SHA-256 (a failure shows no canary)."""
    got = _outcome(fn, SERVICE, secret)
    if got[0] == "ok":  # type: ignore[index]
        return ("ok", hashlib.sha256(got[1]).hexdigest())  # type: ignore[index]
    return got


def test_header_safe_is_the_regular_expression() -> None:
    rng = random.Random(41)
    refused = passed = 0
    alphabet = [b"a", b"Z", b"0", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x0b", b"\xff",
                b"\x80", b"\x0d\x0a", b"%", b"\x7f"]
    for _ in range(20000):
        secret = b"".join(rng.choice(alphabet if rng.random() < 0.3 else alphabet[:5])
                          for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.2:
            secret = make_canary().encode() + secret
        want = _safe(_header_safe_reference, secret)
        assert _safe(header_safe, secret) == want, len(secret)
        assert _safe(header_safe, bytearray(secret)) == _safe(_header_safe_reference,
                                                              bytearray(secret))
        refused += want[0] != "ok"  # type: ignore[index]
        passed += want[0] == "ok"  # type: ignore[index]
    assert refused > 3000 and passed > 3000, (refused, passed)


LENGTHS = [b"0", b"00", b"01", b"1", b"1024", b"131072", b"131073", b"0131072", b"", b" 1",
           b"1 ", b"+1", b"-1", b"1_0", b"\xd9\xa1", b"\xef\xbc\x91", b"\xb2", b"1\n", b"1e3",
           b"99999999999999999999", b"0x10", b"\x00", b"10", b"007"]


def _length_ok_reference(length: bytes) -> bool:
    return bool(_CONTENT_LENGTH.fullmatch(length)) and int(length) <= gate.SMALL_BODY


def test_the_response_gate_reads_content_length_as_the_expression() -> None:
    """``_plain_small_head`` takes a plain head exactly when the reference reads its one
    Content-Length as valid and at most ``SMALL_BODY``."""
    rng = random.Random(43)
    redactor = Redactor([(make_canary().encode(), b"__vault.svc__")])
    taken = declined = 0
    for _ in range(4000):
        length = rng.choice(LENGTHS) if rng.random() < 0.6 else (
            b"%d" % rng.randint(0, 2 * gate.SMALL_BODY)) if rng.random() < 0.8 else bytes(
            rng.choice(b"0123456789 \xd9\xa1x") for _ in range(rng.randint(0, 6)))
        f = tflow.tflow()
        f.response = http.Response(b"HTTP/1.1", 200, b"OK",
                                   http.Headers([(b"Content-Length", length)]), b"", None,
                                   0.0, None)
        want = _length_ok_reference(length)
        assert gate._plain_small_head(f, f.response, redactor, "svc") is want, length
        taken += want
        declined += not want
    assert taken > 1000 and declined > 1000, (taken, declined)


def test_strip_names_and_strategy_lookups_are_the_calls() -> None:
    """``_strip``'s ``_BASE_STRIP`` for a service without ``header_name`` and
    ``_host_inject``'s ``STRATEGIES.get`` are what ``strip_names``/``strategy_for`` give."""
    services = [Service(name="svc", hosts=("svc.test",), mode="host_inject", auth=auth, **x)
                for auth, x in (("bearer", {}), ("basic", {}),
                                ("header", {"header_name": "X-Key"}),
                                ("query_param", {"param_name": "k"}))]
    for s in services:
        assert (inject_request.strip_names(s) if s.header_name
                else inject_request._BASE_STRIP) == inject_request.strip_names(s)
        assert (inject_request.STRATEGIES.get(s.auth)
                or inject_request.strategy_for(s)) is inject_request.strategy_for(s)


# -- Keystore.get_shared -----------------------------------------------------------------------


def _digest(secret: Secret | None) -> str | None:
    """A value as a comparison may show it: its SHA-256, never the canary itself."""
    return None if secret is None else hashlib.sha256(secret.reveal()).hexdigest()


def _content(entry: Entry | None) -> object:
    if entry is None:
        return None
    return (entry.name, _digest(entry.value),
            sorted((k, _digest(v)) for k, v in entry.fields.items()), entry.created,
            entry.updated)


def _objects(entry: Entry | None) -> object:
    """The Secret objects an entry holds (a copy holds the stored entry's own)."""
    if entry is None:
        return None
    return (id(entry.value), sorted((k, id(v)) for k, v in entry.fields.items()))


@pytest.fixture()
def keystore(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "keystore.enc", Secret("pw"), kdf=KdfParams(1, 1024, 1))


def test_get_shared_is_get_after_every_kind_of_edit(keystore: Keystore) -> None:
    rng = random.Random(47)
    ticks = iter(range(1, 10**6))
    keystore.clock = lambda: float(next(ticks) // 3)  # type: ignore[method-assign]  # repeats
    names = ["a", "b", "c"]
    values = [make_canary() for _ in range(3)]
    hits = misses = 0
    for _ in range(6000):
        op = rng.random()
        name = rng.choice(names)
        if op < 0.25:
            keystore.set_value(name, Secret(rng.choice(values)))  # often the same value
        elif op < 0.4:
            keystore.set_field(name, rng.choice(["username", "password", "x"]),
                               Secret(rng.choice(values)))
        elif op < 0.45:
            keystore.remove(name)
        elif op < 0.47:
            keystore.save()
            assert not keystore.refresh()  # unchanged on disk: the entries stay
        before = keystore._shared.get(name)
        got = keystore.get_shared(name)
        want = keystore.get(name)
        assert _content(got) == _content(want), name
        assert _objects(got) == _objects(want), name
        if got is not None:
            assert isinstance(got, SharedEntry)
            if before is not None and before[5] is got:
                hits += 1
            else:
                misses += 1
    assert hits > 1000 and misses > 1000, (hits, misses)


def test_get_shared_after_a_refresh_reads_the_file(keystore: Keystore, tmp_path: Path) -> None:
    keystore.set_value("a", Secret(make_canary()))
    keystore.save()
    first = keystore.get_shared("a")
    other = Keystore.open(keystore.path, Secret("pw"))
    fresh = make_canary()
    other.set_value("a", Secret(fresh))
    other.save()
    assert keystore.refresh()
    got = keystore.get_shared("a")
    assert got is not first and got is not None and got.value is not None
    assert _digest(got.value) == _digest(Secret(fresh))


def test_a_shared_entry_refuses_every_write(keystore: Keystore) -> None:
    """The negative twin: no reader can change what the next one reads."""
    keystore.set_value("a", Secret(make_canary()))
    keystore.set_field("a", "username", Secret("user"))
    shared = keystore.get_shared("a")
    assert shared is not None
    with pytest.raises(AttributeError):
        shared.value = Secret("other")
    with pytest.raises(AttributeError):
        shared.fields = {}
    with pytest.raises(AttributeError):
        del shared.name
    with pytest.raises(TypeError):
        shared.fields["password"] = Secret("x")  # type: ignore[index]
    with pytest.raises(TypeError):
        del shared.fields["username"]  # type: ignore[attr-defined]
    assert keystore.get_shared("a") is shared
    # its copy is a plain entry: changing it changes neither the shared one nor the store
    mine = shared.copy()
    assert type(mine) is Entry
    mine.fields["password"] = Secret("x")
    mine.value = None
    assert sorted(shared.fields) == ["username"] and shared.value is not None
    assert _content(keystore.get("a")) == _content(shared)
    assert "vpcanary" not in repr(shared)


def test_seeded_requests_leave_the_keystore_entries_as_they_were(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    home.services.write_text(
        '[[service]]\nname = "bear"\nhosts = ["bear.test"]\nmode = "host_inject"\n'
        'auth = "bearer"\n'
        '[[service]]\nname = "head"\nhosts = ["head.test"]\nmode = "host_inject"\n'
        'auth = "header"\nheader_name = "X-Api-Key"\n'
        '[[service]]\nname = "bas"\nhosts = ["bas.test"]\nmode = "host_inject"\n'
        'auth = "basic"\n'
        '[[service]]\nname = "ph"\nhosts = ["ph.test"]\nmode = "placeholder"\n'
        'auth = "bearer"\nsubstitute_in = ["auth", "header", "query"]\n')
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    for name in ("bear", "head", "ph"):
        ks.set_value(name, Secret(make_canary()))
    ks.set_field("bas", "username", Secret("user"))
    ks.set_field("bas", "password", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    before = bytes(ks.plaintext())
    stored = {n: (e, e.value, dict(e.fields)) for n, e in ks._entries.items()}
    rng = random.Random(53)
    services = list(st.registry.services)
    injected = 0
    for _ in range(600):
        service = rng.choice(services)
        req = tutils.treq(path=rng.choice([b"/x", b"/x?q=__vault.ph__", b"/y?a=1"]),
                          headers=http.Headers())
        req.headers.fields = tuple(
            (rng.choice([b"Authorization", b"X-Api-Key", b"Accept", b"Cookie"]),
             rng.choice([b"Bearer __vault.ph__", b"v", b"__vault.ph__", b""]))
            for _ in range(rng.randint(0, 4)))
        try:
            done = inject_head(st, req, Plan(service, "stream", 1 << 20), None)
        except VaultproxyError:
            continue
        injected += done.injected
        # what every reader got is read-only and is the stored entry's content
        assert isinstance(done.entry, SharedEntry)
        assert _content(done.entry) == _content(ks.get(service.secret_name))
    assert injected > 200, injected
    assert bytes(ks.plaintext()) == before
    for n, (entry, value, fields) in stored.items():
        now = ks._entries[n]
        assert now is entry and now.value is value and now.fields == fields
        assert all(now.fields[k] is v for k, v in fields.items())


# -- Identify: Proxy-Authorization ---------------------------------------------------------


class _IdentifyReference(Identify):
    """Identify.requestheaders before stages4: ``take_proxy_authorization`` always."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:  # type: ignore[override]
        try:
            header = access.take_proxy_authorization(self.rt, flow)  # (always)
            del header  # (a request in a tunnel: its tunnel's decision, not this header)
            rec = record_of(flow)
            if rec.answered:
                return
            st = self.rt.state()
            tunnel = self.rt.connections.tunnels.get(flow.client_conn.id)
            assert tunnel is not None
            decision = rec.decision = _in_tunnel(st, tunnel, flow.request)
            if decision.refusal is not None:
                raise decision.refusal
        except VaultproxyError as e:
            deny(flow, e)


def test_identify_takes_proxy_authorization_as_before(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "home")
    home.create()
    home.services.write_text('[[service]]\nname = "svc"\nhosts = ["svc.test"]\n'
                             'mode = "host_inject"\nauth = "bearer"\n')
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    rt = Runtime(Live(st))
    decoy = b"vpdecoy_" + make_canary().encode()[9:]
    monkeypatch.setattr(access, "refuse", lambda *a: (_ for _ in ()).throw(
        SecretMissing("honeytoken")))
    plain = st.snapshot
    decoyed = dataclasses.replace(plain, honeytokens=HoneytokenIndex({"decoy": decoy.decode()}))
    rng = random.Random(59)
    popped = caught = skipped = connect_caught = 0
    for _ in range(3000):
        active = rng.random() < 0.4
        monkeypatch.setattr(st, "snapshot", decoyed if active else plain)
        results = []
        seed = rng.random()
        for stage in (_IdentifyReference(rt), Identify(rt)):
            r = random.Random(seed)
            f = tflow.tflow()
            f.request.host, f.request.port = "svc.test", 443
            f.request.scheme = r.choice(["https", "https", "http"])
            fields = [(b"Host", b"svc.test")]
            for _ in range(r.randint(0, 3)):
                name = r.choice([b"Proxy-Authorization", b"proxy-authorization",
                                 b"PROXY-AUTHORIZATION", b"Accept", b"Proxy-Auth"])
                fields.append((name, r.choice([b"Basic eDp5", decoy, b"v"])))
            f.request.headers.fields = tuple(fields)
            if r.random() < 0.15:  # a CONNECT inside the tunnel: its target is checked too
                f.request.method = "CONNECT"
                f.request.data.authority = r.choice([decoy, b"svc.test"]) + b":443"
            target = ("svc.test", 443)
            rt.connections.open(f.client_conn.id,
                                Tunnel(Decision(None, None, target, target=target)))
            stage.requestheaders(f)
            rec: FlowRecord = record_of(f)
            results.append((f.request.headers.fields, rec.refusal and rec.refusal.code,
                            rec.decision is not None))
            rt.connections.close(f.client_conn.id)
        assert results[0] == results[1], results
        has = any(k.lower() == b"proxy-authorization" for k, _ in fields)
        popped += has
        caught += results[0][1] == "secret_missing"  # (the stand-in for the decoy's refusal)
        connect_caught += (results[0][1] == "secret_missing" and not has)
        skipped += not has and not active
    assert popped > 500 and caught > 100 and skipped > 500 and connect_caught > 20, (
        popped, caught, skipped, connect_caught)
