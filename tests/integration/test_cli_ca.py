"""`vaultproxy ca show` / `ca bundle` as a user runs them: a real subprocess, exit codes, output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_ca_bundle import fingerprints
from vaultproxy import ca as ca_mod
from vaultproxy.files.home import Home

pytestmark = pytest.mark.integration


def vaultproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    home.create()
    ca_mod.ensure_ca(home)
    return home


def test_show_prints_path_subject_expiry_fingerprint(home: Home) -> None:
    ca = ca_mod.load_ca(home)
    result = vaultproxy("ca", "show", "--home", str(home.path))
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["path"] == str(home.ca_cert)
    assert fields["key"] == str(home.ca_key)
    assert fields["subject"] == ca.subject
    assert fields["expires"] == ca.not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert fields["sha256"] == ca.fingerprint_sha256
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_show_uses_vaultproxy_home(home: Home) -> None:
    result = vaultproxy("ca", "show", env={"VAULTPROXY_HOME": str(home.path)})
    assert result.returncode == 0, result.stderr
    assert ca_mod.load_ca(home).fingerprint_sha256 in result.stdout


def test_bundle_prints_only_the_path(home: Home) -> None:
    result = vaultproxy("ca", "bundle", "--home", str(home.path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{home.ca_bundle}\n"
    fps = fingerprints(Path(result.stdout.strip()))
    assert ca_mod.load_ca(home).fingerprint_sha256 in fps
    assert len(fps) > 1


def test_show_without_ca_says_run_init(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    for action in ("show", "bundle"):
        result = vaultproxy("ca", action, "--home", str(home.path))
        assert result.returncode == 1
        assert result.stdout == ""
        assert f"run `vaultproxy init --home {home.path}`" in result.stderr


def test_show_without_home_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    result = vaultproxy("ca", "show", "--home", str(missing))
    assert result.returncode == 2
    assert f"vaultproxy init --home {missing}" in result.stderr
    assert not missing.exists()


@pytest.mark.security
def test_show_refuses_world_readable_key(home: Home) -> None:
    os.chmod(home.ca_key, 0o644)
    result = vaultproxy("ca", "show", "--home", str(home.path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"chmod 0600 {home.ca_key}" in result.stderr
    os.chmod(home.ca_key, 0o600)
    assert vaultproxy("ca", "show", "--home", str(home.path)).returncode == 0


def test_ca_without_action_shows_usage(home: Home) -> None:
    result = vaultproxy("ca")
    assert result.returncode == 2
    assert "show" in result.stderr and "bundle" in result.stderr


def _verifies(bundle: Path, ca: object, host: str = "pypi.corp.internal") -> bool:
    """Does a client trusting only ``bundle`` accept a server certificate from ``ca``?"""
    import socket
    import ssl
    import threading

    import trustme

    assert isinstance(ca, trustme.CA)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(bundle))
    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(b, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(a, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError:
        return False
    finally:
        a.close()
        t.join(30)
        b.close()


def test_extra_ca_is_added_to_the_agent_bundle(home: Home, tmp_path: Path) -> None:
    import trustme

    (home.services).write_text("# my registry\n")
    private = trustme.CA()
    pem = tmp_path / "corp-ca.pem"
    private.cert_pem.write_to_path(str(pem))
    bundle = Path(vaultproxy("ca", "bundle", "--home", str(home.path)).stdout.strip())
    assert not _verifies(bundle, private)  # negative twin: the private CA is not trusted

    r = vaultproxy("ca", "bundle", "--add", str(pem), "--home", str(home.path))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == bundle
    assert _verifies(bundle, private)
    assert _verifies(bundle, private) and ca_mod.load_ca(home).fingerprint_sha256 in \
        fingerprints(bundle)
    text = home.services.read_text()
    assert text.startswith("# my registry\n") and "[agent]" in text and str(pem) in text
    # Idempotent, and a non-certificate is refused with the flag named.
    assert vaultproxy("ca", "bundle", "--add", str(pem), "--home", str(home.path)).returncode == 0
    assert home.services.read_text().count(str(pem)) == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    r = vaultproxy("ca", "bundle", "--add", str(junk), "--home", str(home.path))
    assert r.returncode == 2 and "--add" in r.stderr and "PEM" in r.stderr


def test_extra_ca_from_services_toml_relative_to_home(home: Home) -> None:
    import trustme

    private = trustme.CA()
    private.cert_pem.write_to_path(str(home.path / "index-ca.pem"))
    home.services.write_text('[agent]\nextra_ca = ["index-ca.pem"]\n')
    bundle = Path(vaultproxy("ca", "bundle", "--home", str(home.path)).stdout.strip())
    assert _verifies(bundle, private)
    home.services.write_text('[agent]\nextra_ca = ["missing.pem"]\n')
    r = vaultproxy("check", "--home", str(home.path))
    assert r.returncode == 1 and "agent.extra_ca[0]: file not found" in r.stdout
