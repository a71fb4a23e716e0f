"""`vaultproxy check` on the keys and keystore fields of path_prefix, aws_sigv4,
google_service_account and github_app: as a subprocess, exact lines, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, cli

pytestmark = pytest.mark.integration

SERVICES = """\
[[service]]
name = "tg"
hosts = ["api.telegram.org"]
mode = "host_inject"
auth = "path_prefix"
path_prefix = "/bot{secret}"

[[service]]
name = "s3"
hosts = ["s3.amazonaws.com"]
mode = "host_inject"
auth = "aws_sigv4"
region = "us-east-1"
aws_service = "s3"

[[service]]
name = "gcs"
hosts = ["storage.googleapis.com"]
mode = "host_inject"
auth = "google_service_account"
scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]

[[service]]
name = "gh"
hosts = ["api.github.com"]
mode = "host_inject"
auth = "github_app"
"""


def _check(home: ProxyHome) -> tuple[int, list[str]]:
    r = cli(home.path, "check", "--password-file", str(home.password_file), check=False)
    return r.returncode, r.stdout.splitlines()


def test_complete_entries_pass(tmp_path: Path) -> None:
    home = ProxyHome.create(tmp_path, SERVICES, {
        "tg": "123:" + make_canary(),
        "s3": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": make_canary()},
        "gcs": {"json": '{"type": "service_account"}'},
        "gh": {"app_id": "1", "private_key": make_canary(), "installation_id": "2"},
    })
    code, out = _check(home)
    assert code == 0, out
    assert out[0].startswith("services.toml OK: 4 service(s)")


def test_missing_fields_are_named(tmp_path: Path) -> None:
    home = ProxyHome.create(tmp_path, SERVICES, {
        "tg": {"username": "only-a-field"},
        "s3": {"access_key_id": "AKIAEXAMPLE"},
        "gcs": {"key": make_canary()},
        "gh": {"app_id": "1", "private_key": make_canary()},
    })
    code, out = _check(home)
    assert code == 1
    assert out == [
        'service "tg" (service[0]).secret: keystore entry "tg" has no value (only fields); '
        'auth = "path_prefix" needs a value',
        'service "s3" (service[1]).secret: keystore entry "s3" lacks field(s) secret_access_key '
        '(auth = "aws_sigv4" needs access_key_id, secret_access_key)',
        'service "gcs" (service[2]).secret: keystore entry "gcs" lacks field(s) json '
        '(auth = "google_service_account" needs json)',
        'service "gh" (service[3]).secret: keystore entry "gh" lacks field(s) installation_id '
        '(auth = "github_app" needs app_id, private_key, installation_id)',
    ]


def test_bad_keys_are_named_without_values(tmp_path: Path) -> None:
    bad = (SERVICES.replace('path_prefix = "/bot{secret}"', 'path_prefix = "/bot"')
           .replace('region = "us-east-1"\n', "")
           .replace('auth = "github_app"', 'auth = "github_app"\napi_url = "http://ghe.example"'))
    home = ProxyHome.create(tmp_path, bad, {})
    code, out = _check(home)
    assert code == 1
    assert out == [
        "service \"tg\" (service[0]).path_prefix: must hold {secret} exactly once",
        'service "s3" (service[1]).region: is required when auth = "aws_sigv4"',
        "service \"gh\" (service[3]).api_url: must be an https:// URL",
    ]
