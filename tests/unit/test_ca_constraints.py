"""Name constraints for the MITM CA (pure): which subtrees a host list gives, which names a
constrained CA permits, the hosts that fall outside, and re-issuing with the same key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vaultproxy.ca import constraints
from vaultproxy.ca.authority import _generate

HOSTS = ["api.example.com", "api.example.com:8443", "*.wild.test", "10.0.0.5:9000",
         "[2606:4700::1]"]


def test_subtrees_for_hosts() -> None:
    nc = constraints.name_constraints(HOSTS)
    assert nc.permitted_subtrees == [
        x509.DNSName("api.example.com"), x509.DNSName("wild.test"),
        x509.IPAddress(ipaddress.ip_network("10.0.0.5/32")),
        x509.IPAddress(ipaddress.ip_network("2606:4700::1/128")),
        x509.DNSName("vaultproxy.internal"),
    ]
    assert nc.excluded_subtrees is None  # IP subtrees are permitted: other IPs are not


def test_no_ip_host_excludes_every_ip_and_nothing_registered_permits_nowhere() -> None:
    nc = constraints.name_constraints(["api.example.com"])
    assert nc.excluded_subtrees == [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                                    x509.IPAddress(ipaddress.ip_network("::/0"))]
    empty = constraints.name_constraints([])
    assert x509.DNSName("vaultproxy.internal") in (empty.permitted_subtrees or [])


@pytest.mark.parametrize(("name", "ok"), [
    ("api.example.com", True), ("API.example.com", True), ("v1.api.example.com", True),
    ("example.com", False), ("evilapi.example.com", False), ("api.example.com.evil", False),
    ("x.wild.test", True), ("*.wild.test", True), ("wild.test", True), ("notwild.test", False),
    ("10.0.0.5", True), ("10.0.0.6", False), ("2606:4700::1", True), ("::1", False),
    ("vaultproxy.internal", True), ("localhost", False),
])
def test_permits(name: str, ok: bool) -> None:
    assert constraints.permits(constraints.name_constraints(HOSTS), name) is ok


def test_permits_without_ip_hosts_refuses_every_ip() -> None:
    nc = constraints.name_constraints(["api.example.com"])
    assert not constraints.permits(nc, "127.0.0.1")
    assert not constraints.permits(nc, "::1")


def test_reissue_keeps_key_and_subject_and_reports_outside() -> None:
    key, cert = _generate()
    constrained = constraints.reissued(cert, key, ["api.example.com"])
    assert constrained.subject == cert.subject and constrained.public_key() == cert.public_key()
    assert constrained.serial_number != cert.serial_number
    ext = constrained.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert constrained.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constrained.verify_directly_issued_by(constrained)  # self-signed with the same key
    assert constraints.outside(constrained, ["api.example.com", "new.example.org"]) == \
        ["new.example.org"]
    (line,) = constraints.warnings(constrained, ["new.example.org"])
    assert "new.example.org" in line and "ca reissue" in line
    assert constraints.outside(cert, ["anything.example"]) == []  # unconstrained
    plain = constraints.reissued(constrained, key, None)
    assert constraints.constraints_of(plain) is None
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_run_start_warns_about_a_host_outside(tmp_path: Path) -> None:
    from tests.harness.proxy import ProxyHome
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.serve import start_warnings
    from vaultproxy.files.home import Home

    block = '[[service]]\nname = "{0}"\nhosts = ["{0}.example"]\nmode = "host_inject"\n' \
            'auth = "bearer"\n'
    th = ProxyHome.create(tmp_path, block.format("kept"))
    home = Home(th.path)
    constraints.reissue_ca(home, ["kept.example"])
    assert not [w for w in start_warnings(ProxyState.load(home), "127.0.0.1") if "outside" in w]
    (th.path / "services.toml").write_text(block.format("kept") + block.format("added"))
    warned = [w for w in start_warnings(ProxyState.load(home), "127.0.0.1") if "outside" in w]
    assert len(warned) == 1 and "added.example" in warned[0]
