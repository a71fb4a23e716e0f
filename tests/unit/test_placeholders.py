"""placeholders.py: token regex, misdirection/unknown detection through encodings, substitution."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from urllib.parse import parse_qs, unquote_plus, unquote_to_bytes

import pytest

from vaultproxy.errors import PlaceholderMisdirected, PlaceholderUnknown, SecretMissing
from vaultproxy.values.placeholders import TOKEN_RE, PlaceholderIndex, substitute

INDEX = PlaceholderIndex(
    {"__vault.openai__": "openai", "__vault.github__": "github", "MYCUSTOM-TOKEN-1": "custom"}
)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (b"Bearer __vault.openai__", [b"openai"]),
        (b"__vault.a__ and __vault.b-c_d__", [b"a", b"b-c_d"]),
        (b"__vault.__", []),
        (b"__vault.-x__", []),
        (b"__vault.X__", []),
        (b"__vault." + b"a" * 64 + b"__", [b"a" * 64]),
        (b"__vault." + b"a" * 65 + b"__", []),
    ],
)
def test_token_re(data: bytes, names: list[bytes]) -> None:
    assert [m.group(1) for m in TOKEN_RE.finditer(data)] == names


@pytest.mark.parametrize(
    "data",
    [
        b"Bearer __vault.openai__",
        b"/v1/models?key=__vault.openai__",
        b"no placeholder at all",
        b"",
        b"100% sure + \\n escapes",
    ],
)
def test_own_placeholder_passes(data: bytes) -> None:
    INDEX.scan(data, "openai")


MISDIRECTED = [
    b"Bearer __vault.github__",
    b"MYCUSTOM-TOKEN-1",
    b"key=__vault%2Egithub__",
    b"key=%5F%5Fvault%2egithub%5F%5F",
    b"key=" + b"".join(b"%%%02X" % c for c in b"__vault.github__"),
    b"key=__vault%252Egithub__",  # double percent-encoding
    b"MYCUSTOM-TOKEN-1".replace(b"-", b"%2D"),
    b'{"k": "\\u005f_vault.github__"}',
    b"Basic " + base64.b64encode(b"user:__vault.github__"),
    b"basic " + base64.urlsafe_b64encode(b"x:MYCUSTOM-TOKEN-1").rstrip(b"="),
    b"__vault.openai__ and __vault.github__",
]


@pytest.mark.parametrize("data", MISDIRECTED)
def test_misdirected_detected_through_encodings(data: bytes) -> None:
    with pytest.raises(PlaceholderMisdirected):
        INDEX.scan(data, "openai")


@pytest.mark.parametrize(
    "data",
    [b"__vault.nobody__", b"x=__vault%2Enobody__", b"Basic " + base64.b64encode(b"u:__vault.zz__")],
)
def test_unknown_token(data: bytes) -> None:
    with pytest.raises(PlaceholderUnknown):
        INDEX.scan(data, "openai")


def test_default_token_of_custom_service() -> None:
    # "custom" set its own placeholder: its default-form token is never a carrier.
    with pytest.raises(PlaceholderMisdirected):
        INDEX.scan(b"__vault.custom__", "openai")
    with pytest.raises(PlaceholderUnknown):
        INDEX.scan(b"__vault.custom__", "custom")


def test_empty_service_name_rejects_every_placeholder() -> None:
    with pytest.raises(PlaceholderMisdirected):
        INDEX.scan(b"__vault.openai__", "")


def test_contains_own() -> None:
    assert INDEX.contains_own(b"Bearer __vault.openai__", "openai")
    assert INDEX.contains_own(b"Basic " + base64.b64encode(b"u:__vault.openai__"), "openai")
    assert not INDEX.contains_own(b"Bearer __vault.github__", "openai")
    assert not INDEX.contains_own(b"__vault.openai__", "nosuch")


def test_empty_placeholder_refused() -> None:
    with pytest.raises(ValueError):
        PlaceholderIndex({"": "x"})


AWKWARD = 'a b+c/d?e&f=g%h"i\\j<k>é\n'
PH = b"__vault.openai__"


@pytest.mark.parametrize(
    ("context", "decode"),
    [
        ("raw", lambda b: b),
        ("percent", unquote_to_bytes),
        ("form", lambda b: unquote_plus(b.decode("ascii")).encode()),
        ("json", lambda b: json.loads(b'"' + b + b'"').encode()),
    ],
)
def test_substitute_contexts_round_trip(
    context: str, decode: Callable[[bytes], bytes], canary: Callable[[], str]
) -> None:
    secret = (canary() + AWKWARD).encode()
    out = substitute(b"pre" + PH + b"post", PH, secret, context)  # type: ignore[arg-type]
    assert out.startswith(b"pre") and out.endswith(b"post")
    assert decode(out[3:-4]) == secret


def test_substitute_percent_is_query_safe(canary: Callable[[], str]) -> None:
    secret = (canary() + "&x=1#frag ").encode()
    out = substitute(b"a=1&key=" + PH, PH, secret, "percent")
    assert parse_qs(out.decode()) == {"a": ["1"], "key": [secret.decode()]}


def test_substitute_json_stays_valid(canary: Callable[[], str]) -> None:
    secret = (canary() + AWKWARD).encode()
    body = json.dumps({"k": PH.decode(), "n": 1}).encode()
    assert json.loads(substitute(body, PH, secret, "json")) == {"k": secret.decode(), "n": 1}


def test_substitute_json_refuses_non_utf8() -> None:
    with pytest.raises(SecretMissing):
        substitute(PH, PH, b"\xff\xfe", "json")


def test_substitute_without_placeholder_is_identity() -> None:
    data = b"nothing here"
    assert substitute(data, PH, b"s", "raw") is data
