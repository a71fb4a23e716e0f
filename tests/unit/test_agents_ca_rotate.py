"""`vaultproxy ca rotate`: the next CA overlaps the current one in the bundle until --finish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from vaultproxy import ca as ca_mod
from vaultproxy.errors import CAError
from vaultproxy.files.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.create()
    ca_mod.ensure_ca(h)
    return h


def _fp_in_bundle(home: Home, fp: str) -> bool:
    return f"SHA-256 {fp}" in ca_mod.build_bundle(home).read_text()


def test_rotate_overlap_then_finish(home: Home) -> None:
    old = ca_mod.load_ca(home)
    nxt = ca_mod.rotate_start(home)
    nfp = ca_mod.fingerprint(nxt)
    # Overlap: the proxy still signs with the old CA; the bundle carries both.
    assert ca_mod.load_ca(home).fingerprint_sha256 == old.fingerprint_sha256
    assert _fp_in_bundle(home, old.fingerprint_sha256) and _fp_in_bundle(home, nfp)
    key, crt = ca_mod.next_paths(home)
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    with pytest.raises(CAError, match="already in progress"):
        ca_mod.rotate_start(home)
    new = ca_mod.rotate_finish(home)
    assert new.fingerprint_sha256 == nfp
    assert not key.exists() and not crt.exists()
    assert _fp_in_bundle(home, nfp) and not _fp_in_bundle(home, old.fingerprint_sha256)
    retired = ca_mod.retired_cert_path(home).read_bytes()
    assert retired == old.cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CAError, match="no CA rotation"):
        ca_mod.rotate_finish(home)


def test_finish_resumes_after_a_crash_between_renames(home: Home) -> None:
    nxt = ca_mod.rotate_start(home)
    key, crt = ca_mod.next_paths(home)
    os.replace(key, home.ca_key)  # as if --finish died after its first rename
    assert ca_mod.rotate_finish(home).fingerprint_sha256 == ca_mod.fingerprint(nxt)


def test_abort_drops_next(home: Home) -> None:
    old = ca_mod.load_ca(home)
    nxt = ca_mod.rotate_start(home)
    assert ca_mod.rotate_abort(home)
    assert not _fp_in_bundle(home, ca_mod.fingerprint(nxt))
    assert ca_mod.load_ca(home).fingerprint_sha256 == old.fingerprint_sha256
    assert not ca_mod.rotate_abort(home)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["trust.sh", "untrust.sh"])
@pytest.mark.parametrize("os_name", ["debian", "fedora", "macos"])
def test_trust_scripts_dry_run(home: Home, script: str, os_name: str) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    fp = ca_mod.load_ca(home).fingerprint_sha256
    r = subprocess.run(["sh", str(REPO / "ca" / script), "--dry-run", "--os", os_name,
                        str(home.ca_cert)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert fp in r.stdout and "would run:" in r.stdout and "+ " not in r.stdout
    bad = subprocess.run(["sh", str(REPO / "ca" / script), "-n", "--os", os_name,
                          str(home.ca_key)], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
