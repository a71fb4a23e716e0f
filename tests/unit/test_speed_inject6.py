"""The injection's per-request shortcuts (session 14, ``inject6``) answer exactly as the code
they replace, on seeded input; the code before each shortcut is kept here as the reference.

* ``need_value`` reveals first and tests the bytes (no ``Secret.__bool__`` call), against
  the ``value is None or not value`` form;
* ``need_header_value(service, value, prefix)`` against
  ``header_safe(service, prefix + need_value(service, value))`` (bearer and header);
* ``Draft.set_header`` with each name's bytes kept (``_spelled``) against the form that
  encodes, lower-cases and canonicalises the name on every call;
* the bearer and header strategies end to end against their old bodies.
Twins: every error is reached (no value, an empty one, a wiped one, CR/LF/NUL with and
without a prefix, a name that is not ASCII), the kept spellings hold names only (never a
value), and a name is never answered with another name's spelling.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import pytest

from tests.canary import make_canary
from vaultproxy.config.models import Service
from vaultproxy.errors import ConfigError, SecretMissing, VaultproxyError
from vaultproxy.inject import strategy
from vaultproxy.inject.bearer import Bearer
from vaultproxy.inject.header import Header
from vaultproxy.inject.strategy import (
    Draft,
    header_safe,
    need_header_value,
    need_option,
    need_value,
)
from vaultproxy.secret import Secret

# -- the references: the code before inject6 --------------------------------------------


def _need_value_reference(service: Service, value: Secret | None) -> bytes:
    if value is None or not value:
        raise SecretMissing(
            f"service {service.name!r}: keystore entry {service.secret_name!r} has no value"
        )
    return value.reveal()


class _ReferenceDraft(Draft):
    """``Draft.set_header`` as it read before the kept spellings."""

    __slots__ = ()

    def set_header(self, name: str, value: bytes) -> None:
        lname = name.lower().encode("ascii")
        if lname.replace(b"_", b"-") not in self.absent:
            self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        self.absent = frozenset()
        self.headers.append((name.encode("ascii"), value))


def _header_safe_of_need_value(service: Service, value: Secret | None, prefix: bytes
                                ) -> bytes:
    return header_safe(service, prefix + _need_value_reference(service, value))


def _bearer_reference(draft: Draft, service: Service, value: Secret | None) -> None:
    secret = header_safe(service, _need_value_reference(service, value))
    draft.set_header("Authorization", b"Bearer " + secret)


def _header_reference(draft: Draft, service: Service, value: Secret | None) -> None:
    name = need_option(service, "header_name")
    prefix = (service.prefix or "").encode("utf-8")
    secret = header_safe(service, prefix + _need_value_reference(service, value))
    draft.set_header(name, secret)


# -- seeded input --------------------------------------------------------------------------

NAMES = ["Authorization", "authorization", "AUTHORIZATION", "X-Api-Key", "x_api_key",
         "X_API-KEY", "X-Custom", "x_custom", "Cookie", "İd", "te_", "_", "Accept"]
FIELD_NAMES = [b"Host", b"Authorization", b"authorization", b"x-api-key", b"X_Api_Key",
               b"X-API-KEY", b"x-custom", b"X_CUSTOM", b"Cookie", b"Accept", b"\xc4\xb0d",
               b"te_", b"_", b"te-"]
CANONICAL = [b"authorization", b"x-api-key", b"x-custom", b"cookie", b"te-", b"-", b"accept"]


def _secret(rng: random.Random) -> Secret | None:
    pick = rng.random()
    if pick < 0.08:
        return None
    if pick < 0.16:
        return Secret(b"")
    if pick < 0.22:
        wiped = Secret(make_canary())
        wiped.wipe()
        return wiped
    raw = make_canary().encode()
    if rng.random() < 0.2:
        at = rng.randrange(len(raw) + 1)
        raw = raw[:at] + rng.choice([b"\r", b"\n", b"\x00", b"\r\n", b"\t", b" "]) + raw[at:]
    return Secret(raw)


def _service(rng: random.Random) -> Service:
    return Service(name=rng.choice(["svc", "other"]), hosts=("svc.test",), mode="host_inject",
                   auth="header", secret=rng.choice([None, "entry"]),
                   header_name=rng.choice(NAMES[3:8]),
                   prefix=rng.choice([None, "Token ", "k "]))


def _outcome(fn: Callable[..., object], *args: object) -> tuple[object, object]:
    try:
        return ("ok", fn(*args))
    except (VaultproxyError, UnicodeError) as e:
        return (type(e), str(e))


def _draft(rng: random.Random, cls: type[Draft]) -> Draft:
    headers = [(rng.choice(FIELD_NAMES), rng.choice([b"v", b"Bearer x", b"1"]))
               for _ in range(rng.randint(0, 6))]
    draft = cls(headers, b"/x", rng.choice([None, b"a=1"]))
    # ``absent`` as the strip leaves it: names no field has (or none: no strip before)
    present = {k.lower().replace(b"_", b"-") for k, _ in headers}
    if rng.random() < 0.5:
        draft.absent = frozenset(n for n in CANONICAL if n not in present
                                 and rng.random() < 0.7)
    return draft


def _state(draft: Draft) -> tuple[object, ...]:
    return (draft.headers, draft.absent, draft.path, draft.query, draft.stripped)


# -- the comparisons -----------------------------------------------------------------------


def test_need_value_is_the_bool_form() -> None:
    rng = random.Random(61)
    seen: dict[object, int] = {}
    for _ in range(4000):
        service, value = _service(rng), _secret(rng)
        want = _outcome(_need_value_reference, service, value)
        got = _outcome(need_value, service, value)
        assert got == want
        seen[want[0]] = seen.get(want[0], 0) + 1
    assert seen["ok"] > 2000 and seen[SecretMissing] > 500, seen


def test_need_header_value_is_header_safe_of_need_value() -> None:
    rng = random.Random(62)
    seen: dict[str, int] = {}
    for _ in range(6000):
        service, value = _service(rng), _secret(rng)
        prefix = rng.choice([b"", b"", b"Token ", b"k\r", b"\n", b"p\x00 "])
        want = _outcome(_header_safe_of_need_value, service, value, prefix)
        got = _outcome(need_header_value, service, value, prefix)
        assert got == want, (prefix, want[0])
        key = "ok" if want[0] == "ok" else str(want[1]).split(": ", 1)[1][:8]
        seen[key] = seen.get(key, 0) + 1
        if not prefix:
            assert _outcome(need_header_value, service, value) == want
    # every path: injected, no value, CR/LF/NUL in the secret or in the prefix
    assert seen["ok"] > 1500 and seen["keystore"] > 500 and seen["the secr"] > 500, seen


def test_set_header_keeps_the_spelling_and_answers_as_before() -> None:
    rng = random.Random(63)
    strategy._spelled.clear()
    filtered = appended = refused = 0
    for _ in range(6000):
        state = rng.getstate()
        a = _draft(rng, _ReferenceDraft)
        rng.setstate(state)
        b = _draft(rng, Draft)
        assert _state(a) == _state(b)
        for _ in range(rng.randint(1, 3)):
            name, value = rng.choice(NAMES), rng.choice([b"x", b"Bearer y", b""])
            before = len(a.headers)
            want = _outcome(a.set_header, name, value)
            got = _outcome(b.set_header, name, value)
            assert got == want, name
            assert _state(b) == _state(a), name
            refused += want[0] != "ok"
            filtered += want[0] == "ok" and len(a.headers) <= before
            appended += want[0] == "ok" and len(a.headers) == before + 1
    assert filtered > 1000 and appended > 1000 and refused > 100, (filtered, appended, refused)
    # names only: no value went in, and a name is never answered with another's spelling
    assert all(k.encode("ascii") == v[0] for k, v in strategy._spelled.items())
    assert set(strategy._spelled) <= set(NAMES)
    assert "İd" not in strategy._spelled  # not ASCII: refused, never kept


def test_bearer_and_header_are_their_old_bodies() -> None:
    rng = random.Random(64)
    ok = refused = 0
    for _ in range(4000):
        service, value = _service(rng), _secret(rng)
        fields: Mapping[str, Secret] = {}
        for new, old in ((Bearer().inject, _bearer_reference),
                         (Header().inject, _header_reference)):
            state = rng.getstate()
            a = _draft(rng, _ReferenceDraft)
            rng.setstate(state)
            b = _draft(rng, Draft)
            want = _outcome(old, a, service, value)
            got = _outcome(new, b, service, value, fields)
            assert got == want and _state(b) == _state(a)
            ok += want[0] == "ok"
            refused += want[0] != "ok"
    assert ok > 3000 and refused > 1000, (ok, refused)


def test_header_without_header_name_is_still_a_config_error() -> None:
    service = Service(name="svc", hosts=("svc.test",), mode="host_inject", auth="header",
                      header_name="X-Key")
    object.__setattr__(service, "header_name", None)
    with pytest.raises(ConfigError):
        Header().inject(Draft([], b"/", None), service, Secret(make_canary()), {})


def test_kept_spellings_never_hold_a_secret() -> None:
    """Negative twin of the kept spellings: after injections with canary secrets, nothing
    kept holds one (names only)."""
    strategy._spelled.clear()
    secret = make_canary()
    for name in ("X-Api-Key", "x_custom"):
        service = Service(name="svc", hosts=("svc.test",), mode="host_inject", auth="header",
                          header_name=name, prefix="Token ")
        draft = Draft([(b"Host", b"svc.test")], b"/", None)
        Header().inject(draft, service, Secret(secret), {})
        assert draft.headers[-1] == (name.encode(), b"Token " + secret.encode())
    draft = Draft([], b"/", None)
    Bearer().inject(draft, service, Secret(secret), {})
    assert draft.headers == [(b"Authorization", b"Bearer " + secret.encode())]
    kept = repr(strategy._spelled)
    assert secret not in kept and "Token" not in kept and "Bearer" not in kept
    assert set(strategy._spelled) == {"X-Api-Key", "x_custom", "Authorization"}
