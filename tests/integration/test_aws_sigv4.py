"""auth = "aws_sigv4" against moto with its signature checks on (tests/harness/moto_aws.py).

The agent is boto3 holding bogus keys; the keystore holds a key moto's IAM issued. Through
the proxy, S3 PutObject/GetObject/presigned GET and an STS call (a signed body) succeed and
moto sees only the proxy's signature; the twins: the same bogus keys straight to moto fail,
a wrong keystore key fails, a chunk-signed upload and an oversized body to a body-signing
service are refused. Nothing the agent gets back holds the key id or secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests import canary
from tests.harness.moto_aws import MotoAws
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.integration.conftest import agent_client

pytestmark = pytest.mark.integration

AGENT_KEY, AGENT_SECRET = "AKIAAGENTBOGUSKEY000", "agent-bogus-secret-key-0000000000000000"
BUCKET = "vp-bucket"

SERVICES = """
[proxy]
max_body_mb = 1

[[service]]
name = "s3"
hosts = ["s3.amazonaws.com", "s3.us-east-1.amazonaws.com"]  # boto3 uses the first for us-east-1
mode = "host_inject"
auth = "aws_sigv4"
region = "us-east-1"
aws_service = "s3"
secret = "aws"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "moto-ca.pem"

[[service]]
name = "s3-wrong"
hosts = ["s3.eu-west-1.amazonaws.com"]
mode = "host_inject"
auth = "aws_sigv4"
region = "eu-west-1"
aws_service = "s3"
secret = "aws-wrong"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "moto-ca.pem"

[[service]]
name = "sts"
hosts = ["sts.amazonaws.com"]
mode = "host_inject"
auth = "aws_sigv4"
region = "us-east-1"
aws_service = "sts"
secret = "aws"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "moto-ca.pem"
"""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAws]:
    m = MotoAws(tmp_path_factory.mktemp("moto")).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def keys(moto: MotoAws) -> tuple[str, str]:
    key = moto.create_user("vp-agent-proxy")
    moto.client("s3").create_bucket(Bucket=BUCKET)
    moto.client("s3").put_object(Bucket=BUCKET, Key="seeded.txt", Body=b"seeded")
    moto.enforce_auth()
    return key


@pytest.fixture(scope="module", params=["1", "2"], ids=["1-worker", "2-workers"])
def proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory, moto: MotoAws, keys: tuple[str, str]
) -> Iterator[ProxyProcess]:
    base = tmp_path_factory.mktemp("sigv4")
    canary.watch(base)
    akid, secret = keys
    home = ProxyHome.create(
        base,
        SERVICES.format(port=moto.port),
        {
            "aws": {"access_key_id": akid, "secret_access_key": secret},
            "aws-wrong": {"access_key_id": akid, "secret_access_key": secret[::-1]},
        },
        files={"moto-ca.pem": moto.ca_file.read_bytes()},
    )
    p = ProxyProcess.start(home, args=("--workers", request.param))
    yield p
    p.stop()


class AgentSigs:
    """Every Authorization / X-Amz-Signature the agent's boto3 produced."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def __call__(self, request: Any, **_: Any) -> None:
        auth = request.headers.get("Authorization")
        if auth:
            text = auth.decode() if isinstance(auth, bytes) else auth
            self.values.append(text.rsplit("Signature=", 1)[-1])


def agent_s3(proxy: ProxyProcess, region: str = "us-east-1", sigs: AgentSigs | None = None,
             signature_version: str | None = None, **config: Any) -> Any:
    client = boto3.client(
        "s3", region_name=region, aws_access_key_id=AGENT_KEY,
        aws_secret_access_key=AGENT_SECRET, verify=str(proxy.home.ca_cert),
        config=BotoConfig(proxies={"https": proxy.url}, s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}, signature_version=signature_version,
                          **config),
    )
    if sigs is not None:
        client.meta.events.register("before-send", sigs)
    return client


def _arrived_since(moto: MotoAws, n: int) -> list[Any]:
    return moto.arrived[n:]


def _assert_proxy_signed(moto: MotoAws, n: int, akid: str, sigs: AgentSigs) -> None:
    arrived = _arrived_since(moto, n)
    assert arrived, "nothing reached moto"
    for a in arrived:
        auth = a.headers.get("authorization", "")
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={akid}/"), auth[:60]
        assert AGENT_KEY not in json.dumps(a.headers) and AGENT_KEY not in a.target
        for sig in sigs.values:
            assert sig not in json.dumps(a.headers) and sig not in a.target


def test_s3_put_and_get_through_the_proxy(
    proxy: ProxyProcess, moto: MotoAws, keys: tuple[str, str]
) -> None:
    sigs = AgentSigs()
    s3 = agent_s3(proxy, sigs=sigs)
    n = len(moto.arrived)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 1
    s3.put_object(Bucket=BUCKET, Key="dir/hello world.txt", Body=b"hello from the agent")
    got = s3.get_object(Bucket=BUCKET, Key="dir/hello world.txt")["Body"].read()
    assert got == b"hello from the agent"
    assert len(sigs.values) >= 3  # the agent did sign, with its bogus key
    _assert_proxy_signed(moto, n, keys[0], sigs)
    put = [a for a in _arrived_since(moto, n) if a.method == "PUT" and "hello" in a.target]
    assert put and put[-1].headers["x-amz-content-sha256"] in (
        "UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")


def test_s3_put_with_a_body_hash_streams_unsigned(
    proxy: ProxyProcess, moto: MotoAws, keys: tuple[str, str]
) -> None:
    """An agent that hashes its body (no flexible checksum) sends the SHA-256; the proxy
    streams the body and signs UNSIGNED-PAYLOAD instead of buffering it."""
    sigs = AgentSigs()
    s3 = agent_s3(proxy, sigs=sigs, request_checksum_calculation="when_required")
    n = len(moto.arrived)
    s3.put_object(Bucket=BUCKET, Key="hashed.bin", Body=b"\x00\x01" * 5000)
    assert s3.get_object(Bucket=BUCKET, Key="hashed.bin")["Body"].read() == b"\x00\x01" * 5000
    _assert_proxy_signed(moto, n, keys[0], sigs)
    put = [a for a in _arrived_since(moto, n) if a.method == "PUT"]
    assert put[-1].headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_bogus_agent_keys_straight_to_moto_fail(moto: MotoAws, keys: tuple[str, str]) -> None:
    """Negative twin: moto enforces signatures, so the success above needed the proxy's."""
    s3 = moto.client("s3", AGENT_KEY, AGENT_SECRET)
    with pytest.raises(ClientError) as e:
        s3.list_buckets()
    assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    good_id_bad_secret = moto.client("s3", keys[0], "x" * 40)
    with pytest.raises(ClientError) as e:
        good_id_bad_secret.list_buckets()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_wrong_keystore_key_fails(proxy: ProxyProcess, keys: tuple[str, str]) -> None:
    s3 = agent_s3(proxy, region="eu-west-1")
    with pytest.raises(ClientError) as e:
        s3.list_buckets()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


@pytest.mark.parametrize(("version", "marker"),
                         [(None, "AWSAccessKeyId="), ("s3v4", "X-Amz-Signature=")])
def test_presigned_url_is_resigned(
    proxy: ProxyProcess, moto: MotoAws, keys: tuple[str, str], version: str | None, marker: str
) -> None:
    """boto3 presigns with SigV2 on the global endpoint by default, SigV4 when asked."""
    s3 = agent_s3(proxy, signature_version=version)
    s3.put_object(Bucket=BUCKET, Key="presigned.txt", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "presigned.txt"})
    assert marker in url and AGENT_KEY in url
    n = len(moto.arrived)
    with agent_client(proxy) as client:
        r = client.get(url)
    assert r.status_code == 200, r.text[:300]
    assert r.content == b"presigned body"
    arrived = _arrived_since(moto, n)
    assert len(arrived) == 1
    target = arrived[0].target
    assert "?" not in target and AGENT_KEY not in target  # the agent's presign params dropped
    assert arrived[0].headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={keys[0]}/")


def test_signed_body_service(proxy: ProxyProcess, moto: MotoAws, keys: tuple[str, str]) -> None:
    """STS signs the SHA-256 of its form body: the proxy buffers and signs it whole; the
    caller identity moto answers with is the keystore key's IAM user."""
    sts = boto3.client(
        "sts", region_name="us-east-1", endpoint_url="https://sts.amazonaws.com",
        aws_access_key_id=AGENT_KEY, aws_secret_access_key=AGENT_SECRET,
        verify=str(proxy.home.ca_cert),
        config=BotoConfig(proxies={"https": proxy.url}, retries={"max_attempts": 1}),
    )
    n = len(moto.arrived)
    ident = sts.get_caller_identity()
    assert ident["Arn"].endswith(":user/vp-agent-proxy")
    arrived = _arrived_since(moto, n)
    assert arrived[-1].headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={keys[0]}/")


def test_body_over_max_body_mb_is_refused(proxy: ProxyProcess, moto: MotoAws) -> None:
    n = len(moto.arrived)
    with agent_client(proxy) as client:
        r = client.post("https://sts.amazonaws.com/", content=b"A" * (1024 * 1024 + 1),
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert r.headers["x-vaultproxy-error"] == "body_too_large"
    assert len(moto.arrived) == n


def test_chunk_signed_upload_is_refused(proxy: ProxyProcess, moto: MotoAws) -> None:
    n = len(moto.arrived)
    with agent_client(proxy) as client:
        r = client.put(
            f"https://s3.us-east-1.amazonaws.com/{BUCKET}/chunked.txt", content=b"0\r\n\r\n",
            headers={"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                     "content-encoding": "aws-chunked"},
        )
    assert r.status_code == 400
    assert r.headers["x-vaultproxy-error"] == "invalid_request"
    assert len(moto.arrived) == n


def test_agent_never_sees_the_key(proxy: ProxyProcess, keys: tuple[str, str]) -> None:
    """Error answers (moto's SignatureDoesNotMatch, a missing key) reach the agent without
    the key id or secret; the twin: the key id is what moto saw."""
    akid, secret = keys
    with agent_client(proxy) as client:
        replies = [
            client.get(f"https://s3.eu-west-1.amazonaws.com/{BUCKET}/x"),
            client.get(f"https://s3.us-east-1.amazonaws.com/{BUCKET}/missing-key"),
            client.get(f"https://s3.us-east-1.amazonaws.com/{BUCKET}/seeded.txt"),
        ]
    assert [r.status_code for r in replies] == [403, 404, 200]
    for r in replies:
        seen = repr(r.headers.multi_items()).encode() + r.content
        assert akid.encode() not in seen and secret.encode() not in seen


def test_post_proxy_signs_like_the_proxy(
    proxy: ProxyProcess, moto: MotoAws, keys: tuple[str, str]
) -> None:
    """``POST /proxy`` runs the proxy's own request pipeline, so its requests are signed as
    well: at the head (S3 GET) and over the whole body (STS, a form body). Moto checks every
    signature (twin: ``test_bogus_agent_keys_straight_to_moto_fail``)."""
    akid, _ = keys
    token = (proxy.home.path / "admin-token").read_text().strip()
    n = len(moto.arrived)
    with httpx.Client(base_url=str(proxy.extra["admin_url"]), timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/proxy", json={"service": "s3", "path": f"/{BUCKET}/seeded.txt"})
        assert r.status_code == 200 and r.content == b"seeded", r.text
        r = c.post("/proxy", json={
            "service": "sts", "method": "POST", "path": "/",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            "body": "Action=GetCallerIdentity&Version=2011-06-15",
        })
        assert r.status_code == 200 and "GetCallerIdentityResponse" in r.text, r.text
    arrived = moto.arrived[n:]
    assert len(arrived) == 2
    for a in arrived:
        assert a.headers.get("authorization", "").startswith(
            f"AWS4-HMAC-SHA256 Credential={akid}/")
