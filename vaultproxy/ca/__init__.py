"""The MITM CA: create it once and load it safely (authority), hand it to mitmproxy (mitm),
bundle it for agents and find the system store (bundle), rotate it (rotation)."""

from vaultproxy.ca.authority import (
    CA,
    ensure_ca,
    fingerprint,
    load_ca,
    next_paths,
    retired_cert_path,
)
from vaultproxy.ca.bundle import build_bundle, extra_cas, system_ca_file, trust_with
from vaultproxy.ca.mitm import MITM_BASENAME, materialize_mitm_confdir
from vaultproxy.ca.rotation import rotate_abort, rotate_finish, rotate_start

__all__ = [
    "CA",
    "MITM_BASENAME",
    "build_bundle",
    "ensure_ca",
    "extra_cas",
    "fingerprint",
    "load_ca",
    "materialize_mitm_confdir",
    "next_paths",
    "retired_cert_path",
    "rotate_abort",
    "rotate_finish",
    "rotate_start",
    "system_ca_file",
    "trust_with",
]
