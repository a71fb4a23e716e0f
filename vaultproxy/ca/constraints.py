"""A name-constrained MITM CA (opt-in): the CA certificate carries a critical Name
Constraints extension that permits only the registered hosts, so a client that enforces
constraints rejects any certificate this CA's key signs for another name -- also one a thief
signs with a stolen ``ca.key``.

RFC 5280 §4.2.1.10: a permitted ``dNSName`` subtree ``example.com`` admits ``example.com``
and every name below it; a wildcard host ``*.example.com`` is permitted as its parent
domain. IP hosts are permitted as single addresses; when none is registered, all of IPv4
and IPv6 are *excluded* (a constraint names types: without an iPAddress subtree, IP
addresses would be unconstrained). ``vaultproxy.internal``, the host the proxy serves
itself, is always permitted.

Re-issuing keeps the key and the subject (leaves a running proxy signs chain to either
certificate, so nothing breaks mid-run) and changes the serial and the constraints; the old
certificate must then leave every trust store (ca/trust.sh replaces a certificate of the
same subject), or a stolen key could still chain to it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vaultproxy.ca.authority import CA, _read_key, _update_file, load_ca, next_paths
from vaultproxy.errors import CAError
from vaultproxy.files.home import Home
from vaultproxy.net.hostnames import normal_host, split_authority

RESERVED_HOSTS = ("vaultproxy.internal",)  # served by the proxy itself (SPEC §11)
NOWHERE = "vaultproxy.invalid"  # permitted when nothing is registered: RFC 6761, never real
_ALL_IP = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _base(host: str) -> str:
    """``host`` or ``host:port`` (IPv6 in brackets) -> the bare, normalised name."""
    name, _port = split_authority(host)
    return normal_host(name)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def subtree(host: str) -> x509.GeneralName:
    """The permitted subtree for one registered host."""
    name = _base(host)
    ip = _ip(name)
    if ip is not None:
        return x509.IPAddress(ipaddress.ip_network(ip))
    if name.startswith("*."):
        name = name[2:]  # "*.example.com": the parent domain (it admits one label and more)
    return x509.DNSName(name)


def name_constraints(hosts: Iterable[str]) -> x509.NameConstraints:
    """Permit exactly the subtrees of ``hosts`` (+ the reserved ones); exclude every IP
    address when no IP host is registered."""
    permitted: list[x509.GeneralName] = []
    for host in [*hosts, *RESERVED_HOSTS]:
        tree = subtree(host)
        if tree not in permitted:
            permitted.append(tree)
    if not any(isinstance(t, x509.DNSName) for t in permitted):
        permitted.append(x509.DNSName(NOWHERE))
    has_ip = any(isinstance(t, x509.IPAddress) for t in permitted)
    excluded = None if has_ip else [x509.IPAddress(n) for n in _ALL_IP]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def constraints_of(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _dns_ok(name: str, trees: list[x509.GeneralName]) -> bool:
    for t in trees:
        if isinstance(t, x509.DNSName):
            base = t.value.lower().lstrip(".")
            if name == base or name.endswith("." + base):
                return True
    return False


def _ip_in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
           trees: Iterable[x509.GeneralName]) -> bool:
    return any(isinstance(t, x509.IPAddress) and isinstance(t.value, IPNetwork)
               and ip.version == t.value.version and ip in t.value for t in trees)


def permits(nc: x509.NameConstraints, host: str) -> bool:
    """Whether a leaf for ``host`` (a wildcard: for names under it) satisfies ``nc``."""
    name = _base(host)
    ip = _ip(name)
    permitted = list(nc.permitted_subtrees or [])
    excluded = list(nc.excluded_subtrees or [])
    if ip is not None:
        if _ip_in(ip, excluded):
            return False
        has_ip_trees = any(isinstance(t, x509.IPAddress) for t in permitted)
        return not has_ip_trees or _ip_in(ip, permitted)
    if name.startswith("*."):
        name = "x" + name[1:]  # any one label under the wildcard's parent
    if _dns_ok(name, excluded):
        return False
    has_dns_trees = any(isinstance(t, x509.DNSName) for t in permitted)
    return not has_dns_trees or _dns_ok(name, permitted)


def outside(cert: x509.Certificate, hosts: Iterable[str]) -> list[str]:
    """The registered hosts a leaf of ``cert`` could not be trusted for ([] unconstrained)."""
    nc = constraints_of(cert)
    if nc is None:
        return []
    return [h for h in hosts if not permits(nc, h)]


def warnings(cert: x509.Certificate, hosts: Iterable[str]) -> list[str]:
    """One line per registered host outside the CA's name constraints (check/run/reload)."""
    return [
        f"WARNING: host {h} is outside the CA's name constraints: clients that enforce them "
        "will reject its certificate; run `vaultproxy ca reissue` and re-trust ca.crt "
        "(ca/trust.sh)"
        for h in outside(cert, hosts)
    ]


def reissued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
             hosts: Iterable[str] | None) -> x509.Certificate:
    """``cert`` again with the same key, subject and validity, a new serial, and Name
    Constraints for ``hosts`` (None: no constraints)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.NameConstraints):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    if hosts is not None:
        builder = builder.add_extension(name_constraints(hosts), critical=True)
    return builder.sign(key, hashes.SHA256())


def reissue_ca(home: Home, hosts: list[str] | None) -> CA:
    """Write ``ca.crt`` re-issued for ``hosts`` (None: unconstrained); ``ca.key`` is kept."""
    ca = load_ca(home)
    _next_key, next_cert = next_paths(home)
    if os.path.lexists(next_cert):
        raise CAError("a CA rotation is in progress; finish it (`vaultproxy ca rotate "
                      "--finish`) or abort it (`--abort`) before re-issuing")
    cert = reissued(ca.cert, _read_key(home.ca_key), hosts)
    _update_file(home.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return load_ca(home)


def constrain_next(home: Home, hosts: list[str]) -> x509.Certificate:
    """A rotation's next CA (``ca.next.crt``) re-issued with constraints for ``hosts``, so
    a constrained CA stays constrained across ``ca rotate``."""
    key_path, cert_path = next_paths(home)
    current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert = reissued(current, _read_key(key_path), hosts)
    _update_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def home_warnings(home: Home, hosts: Iterable[str]) -> list[str]:
    """``warnings`` for the home's ``ca.crt`` ([] when it cannot be read: load_ca says why
    where it matters)."""
    try:
        cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    except (OSError, ValueError):
        return []
    return warnings(cert, hosts)


def registered_hosts(services: Iterable[object]) -> list[str]:
    """Every ``hosts`` entry of the services, in order."""
    return [h for s in services for h in getattr(s, "hosts", ())]


def leaf_filter_for(cert_file: Path) -> Callable[[str], bool] | None:
    """For the CA certificate in ``cert_file``: a test of whether a leaf may carry a name
    (a host or IP), or None when the CA has no name constraints."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    nc = constraints_of(cert)
    if nc is None:
        return None
    return lambda name: permits(nc, name)
