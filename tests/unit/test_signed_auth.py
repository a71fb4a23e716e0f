"""path_prefix and aws_sigv4 on real mitmproxy requests, without sockets.

The SigV4 signer is checked against AWS's own published test vector (``get-vanilla`` of
the SigV4 test suite) with the clock frozen at its date, so a change in what we sign (a
header too many, a re-encoded path) fails here, not only against moto."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from vaultproxy.config.models import Service
from vaultproxy.errors import InvalidRequest, SecretMissing
from vaultproxy.inject import prepare_request
from vaultproxy.inject.path_prefix import expand
from vaultproxy.inject.sigv4 import payload_mode, sign, sign_at_head, sign_request
from vaultproxy.secret import Secret
from vaultproxy.values.placeholders import PlaceholderIndex

INDEX = PlaceholderIndex({"__vault.tg__": "tg", "__vault.aws__": "aws"})
# AWS SigV4 test suite credentials (public examples, not secrets).
AKID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
AWS_FIELDS = {"access_key_id": Secret(AKID), "secret_access_key": Secret(SECRET)}


def req(path: str = "/", headers: list[tuple[str, str]] | None = None,
        method: str = "GET", host: str = "example.amazonaws.com") -> http.Request:
    r = tutils.treq(path=path.encode(), method=method.encode(), headers=http.Headers(),
                    host=host, port=443, scheme=b"https", authority=b"")
    r.headers.add("Host", host)
    for k, v in headers or []:
        r.headers.add(k, v)
    return r


def tg(**kw: Any) -> Service:
    return Service(name="tg", hosts=("api.telegram.org",), mode="host_inject",
                   auth="path_prefix", path_prefix="/bot{secret}", **kw)


def aws(service: str = "service", **kw: Any) -> Service:
    return Service(name="aws", hosts=("example.amazonaws.com",), mode="host_inject",
                   auth="aws_sigv4", region="us-east-1", aws_service=service, **kw)


# -- path_prefix ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/getMe", "/bot123:abc/getMe"),
        ("/getMe?chat_id=1", "/bot123:abc/getMe?chat_id=1"),
        ("/", "/bot123:abc/"),
    ],
)
def test_path_prefix_goes_in_front(path: str, sent: str) -> None:
    r = req(path, [("Authorization", "Bearer agent-junk")])
    result = prepare_request(r, tg(), Secret("123:abc"), {}, INDEX)
    assert r.path == sent
    assert "authorization" in result.stripped and "Authorization" not in r.headers


@pytest.mark.parametrize(
    ("secret", "encoded"),
    [("a/b", "a%2Fb"), ("a?b#c", "a%3Fb%23c"), ("50%", "50%25"), ("a b", "a%20b"),
     ("1:x-y_z.~", "1:x-y_z.~")],
)
def test_path_prefix_secret_is_one_segment(secret: str, encoded: str) -> None:
    """A secret cannot add segments, start a query or a fragment, or smuggle an escape."""
    assert expand(tg(), "/bot{secret}", secret.encode()) == f"/bot{encoded}".encode()


def test_path_prefix_template_with_trailing_slash() -> None:
    r = req("/getMe")
    prepare_request(r, tg().model_copy(update={"path_prefix": "/bot{secret}/"}),
                    Secret("t0k"), {}, INDEX)
    assert r.path == "/bot" + "t0k/getMe"


def test_path_prefix_refuses_a_target_that_is_not_a_path() -> None:
    r = req("*", method="OPTIONS")
    with pytest.raises(InvalidRequest):
        prepare_request(r, tg(), Secret("t0k"), {}, INDEX)
    assert r.path == "*"  # untouched


def test_path_prefix_missing_secret() -> None:
    with pytest.raises(SecretMissing):
        prepare_request(req("/getMe"), tg(), None, {}, INDEX)


# -- aws_sigv4 --------------------------------------------------------------------------


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's clock at the AWS test suite's instant (20150830T123600Z)."""
    import botocore.auth

    when = datetime.datetime(2015, 8, 30, 12, 36, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)


def test_sigv4_matches_the_aws_test_suite(frozen: None) -> None:
    """``get-vanilla``: GET / to example.amazonaws.com, service "service", us-east-1."""
    out = dict(sign(method="GET", authority="example.amazonaws.com", target=b"/", headers=[],
                    payload=b"", service=aws(), fields=AWS_FIELDS))
    assert out[b"X-Amz-Date"] == b"20150830T123600Z"
    assert out[b"Authorization"] == (
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        b"SignedHeaders=host;x-amz-date, "
        b"Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_sigv4_a_different_key_gives_a_different_signature(frozen: None) -> None:
    """Twin: the vector above depends on the keystore secret."""
    fields = {**AWS_FIELDS, "secret_access_key": Secret(SECRET[::-1])}
    out = dict(sign(method="GET", authority="example.amazonaws.com", target=b"/", headers=[],
                    payload=b"", service=aws(), fields=fields))
    assert b"5fa00fa31553b73e" not in out[b"Authorization"]


def test_sigv4_strips_the_agents_signature() -> None:
    agent_auth = ("AWS4-HMAC-SHA256 Credential=AGENTKEY/20150830/us-east-1/s3/aws4_request, "
                  "SignedHeaders=host, Signature=" + "ab" * 32)
    r = req(
        "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AGENTKEY%2Fx"
        "&x-amz-signature=deadbeef&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
        "&X-Amz-Date=20150830T123600Z&X-Amz-Security-Token=agent-token&versionId=3",
        [("Authorization", agent_auth), ("X-Amz-Date", "20000101T000000Z"),
         ("x_amz_security_token", "agent-token"), ("X-Amz-Content-SHA256", "0" * 64),
         ("x-amz-meta-colour", "blue")],
        method="GET", host="s3.us-east-1.amazonaws.com",
    )
    svc = aws("s3")
    prepare_request(r, svc, None, AWS_FIELDS, INDEX)
    assert sign_at_head(r, svc, AWS_FIELDS)
    assert r.path == "/bucket/key?versionId=3"
    head = repr(r.headers.fields)
    assert "AGENTKEY" not in head and "agent-token" not in head and "ab" * 32 not in head
    assert "20000101" not in head and "0" * 64 not in head
    assert r.headers.get_all("authorization")[0].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert len(r.headers.get_all("authorization")) == 1
    assert r.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert r.headers["x-amz-meta-colour"] == "blue"
    assert "x-amz-meta-colour" in r.headers["authorization"]  # the agent's metadata is signed


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("AWSAccessKeyId=AGENT&Signature=abc%3D&Expires=1796080875", None),
        ("Expires=10&AWSAccessKeyId=AGENT;Signature=abc&versionId=3", "versionId=3"),
        ("x-amz-signature=1&X-AMZ-CREDENTIAL=2&list-type=2", "list-type=2"),
        # Without AWSAccessKeyId, "signature"/"expires" may be the API's own parameters.
        ("Signature=mine&Expires=5", "Signature=mine&Expires=5"),
        ("X-Amz%2DSignature=1&a=b", "a=b"),  # an encoded name is still the name
    ],
)
def test_sigv4_drops_presign_parameters(query: str, kept: str | None) -> None:
    r = req("/bucket/key?" + query, host="s3.amazonaws.com")
    prepare_request(r, aws("s3"), None, AWS_FIELDS, INDEX)
    assert r.path == "/bucket/key" + ("?" + kept if kept else "")


def test_sigv4_session_token_is_sent_and_signed() -> None:
    fields = {**AWS_FIELDS, "session_token": Secret("FQoGZXIvYXdzEXAMPLE")}
    r = req("/", host="sts.amazonaws.com")
    sign_request(r, aws("sts"), fields, None)
    assert r.headers["x-amz-security-token"] == "FQoGZXIvYXdzEXAMPLE"
    assert "x-amz-security-token" in r.headers["authorization"]


@pytest.mark.parametrize(
    ("service", "agent_sha", "mode"),
    [
        ("s3", None, "unsigned"),
        ("s3", "0" * 64, "unsigned"),
        ("s3", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "trailer"),
        ("sts", None, "body"),
        ("execute-api", "UNSIGNED-PAYLOAD", "body"),
    ],
)
def test_sigv4_payload_mode(service: str, agent_sha: str | None, mode: str) -> None:
    headers = [(b"X-Amz-Content-Sha256", agent_sha.encode())] if agent_sha else []
    assert payload_mode(aws(service), headers) == mode


@pytest.mark.parametrize(
    "agent_sha",
    ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
     "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"],
)
def test_sigv4_refuses_chunk_signed_uploads(agent_sha: str) -> None:
    with pytest.raises(InvalidRequest):
        payload_mode(aws("s3"), [(b"x-amz-content-sha256", agent_sha.encode())])


def test_sigv4_body_service_waits_for_the_body() -> None:
    r = req("/", [("Content-Length", "11"), ("Content-Type", "text/plain")], method="POST",
            host="sts.amazonaws.com")
    assert not sign_at_head(r, aws("sts"), AWS_FIELDS)
    assert "authorization" not in r.headers
    sign_request(r, aws("sts"), AWS_FIELDS, b"hello world")
    assert "content-type" in r.headers["authorization"]
    assert "x-amz-content-sha256" not in r.headers  # only S3 wants the hash as a header


@pytest.mark.parametrize(
    ("version", "headers", "waits"),
    [
        ("HTTP/1.1", [], False),  # HTTP/1 without framing headers: no body
        ("HTTP/1.1", [("Content-Length", "0")], False),
        ("HTTP/1.1", [("Transfer-Encoding", "chunked")], True),
        ("HTTP/2.0", [], True),  # HTTP/2 may send DATA without content-length
        ("HTTP/2.0", [("content-length", "0")], False),
    ],
)
def test_sigv4_when_a_body_is_awaited(
    version: str, headers: list[tuple[str, str]], waits: bool
) -> None:
    r = req("/", headers, method="POST", host="sts.amazonaws.com")
    r.http_version = version
    assert sign_at_head(r, aws("sts"), AWS_FIELDS) is not waits
    assert ("authorization" in r.headers) is not waits


def test_sigv4_missing_field_names_the_field() -> None:
    with pytest.raises(SecretMissing, match="secret_access_key"):
        sign_request(req("/"), aws(), {"access_key_id": Secret(AKID)}, None)


@pytest.mark.parametrize("bad", [b"abc\r\nX-Evil: 1", b"\xff\xfe-not-text", b"tab\there"])
def test_sigv4_key_fields_must_be_printable_ascii(bad: bytes) -> None:
    """A session token with CR/LF cannot split a header; an error names the field only."""
    fields = {**AWS_FIELDS, "session_token": Secret(bad)}
    r = req("/", host="sts.amazonaws.com")
    with pytest.raises(SecretMissing, match="session_token") as e:
        sign_request(r, aws("sts"), fields, None)
    assert "xff" not in str(e.value) and "Evil" not in str(e.value)
    assert "authorization" not in r.headers
