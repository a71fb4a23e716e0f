"""What a serving process does not import (seam/imports.py, the lazy MCP endpoint, OTLP sink
and dashboard): memory and start-up time. Each probe runs in a fresh interpreter; the twin
imports the same module without ``lean()`` and sees the package the probe says is gone."""

from __future__ import annotations

import json
import subprocess
import sys

# Only the admin/dashboard/MCP/OTLP features (or mitmproxy's unused default addons) need these.
NEVER_IN_WORKER = (
    "uvicorn",
    "wsgiref",  # prometheus_client's exposition servers
    "mcp",
    "jinja2",
    "fastapi",
    "starlette",
    "ldap3",
    "flask",
    "werkzeug",
    "rich",
    "pygments",
    "google.protobuf",
    "opentelemetry",
)
NEVER_AT_RUN = (
    "mcp",
    "jinja2",
    "ldap3",
    "flask",
    "werkzeug",
    "rich",
    "pygments",
    "google.protobuf",
    "opentelemetry.exporter",
    "opentelemetry.sdk",
    "requests",
)


def _loaded(code: str, names: tuple[str, ...]) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps({{n: n in sys.modules for n in {list(names)!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_worker_imports_none_of_the_supervisor_only_packages() -> None:
    # `python -m vaultproxy.engine.worker` imports this module first; it calls lean() itself.
    loaded = _loaded("import vaultproxy.engine.worker", NEVER_IN_WORKER)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_run_imports_no_mcp_dashboard_otlp_or_default_addons() -> None:
    # what `vaultproxy run` (cli/run.py: lean(), then engine.serve) has loaded when it serves
    code = "from vaultproxy.seam import imports; imports.lean()\nimport vaultproxy.engine.serve"
    loaded = _loaded(code, NEVER_AT_RUN)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_twin_without_lean_mitmproxy_master_pulls_the_default_addons() -> None:
    loaded = _loaded("import mitmproxy.master\nimport httpx", ("ldap3", "flask", "rich"))
    assert all(loaded.values()), loaded


def test_default_addons_still_there_on_demand() -> None:
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys, mitmproxy.master\n"
        "from mitmproxy.addons import core\n"
        "assert 'ldap3' not in sys.modules\n"
        "import mitmproxy.addons as a\n"
        "assert a.save.Save and not hasattr(a, 'no_such_addon')\n"
        "print(len(a.default_addons()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout.strip()) >= 30
