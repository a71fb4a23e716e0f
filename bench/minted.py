"""A cached minted token vs a static bearer, through one `vaultproxy run` (SPEC §4.1).

    .venv/bin/python bench/minted.py            # 5 rounds of 10 s each way
    .venv/bin/python bench/minted.py --quick    # 3 rounds of 4 s

Two host_inject services on the same nginx (bench/upstream.py): `hi` (auth = "bearer", a
static keystore value) and `mt` (auth = "oauth2_client_credentials", token from nginx's
/token, minted once and then served from the cache). `hey` (10 keep-alive connections)
GETs /1k through the proxy, alternating A and B round by round so drift hits both alike.
Reported: requests/s, and the proxy's CPU per request (utime+stime from /proc), median of
the rounds; the figure of merit is minted / static CPU per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import run_hey
from bench.run import cpu_ticks, settle
from bench.targets import REPO, Vaultproxy, VaultproxyHome
from bench.upstream import Nginx

SERVICES = """\
[[service]]
name = "hi"
hosts = ["hi.bench.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "mt"
hosts = ["mt.bench.test"]
mode = "host_inject"
auth = "oauth2_client_credentials"
token_url = "/token"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "upstream-ca.pem"
"""


def measure(proxy: Vaultproxy, service: str, seconds: float) -> tuple[float, float]:
    """(requests/s, proxy CPU ms per request) of one hey run against ``service``."""
    settle(proxy.pids)
    hz = os.sysconf("SC_CLK_TCK")
    before = sum(cpu_ticks(p) for p in proxy.pids)
    res = run_hey(f"https://{service}.bench.test/1k", proxy=proxy.proxy, conns=10,
                  duration_s=seconds)
    used = sum(cpu_ticks(p) for p in proxy.pids) - before
    if not res.ok():
        raise RuntimeError(f"{service}: {res.problem()}")
    count = sum(res.statuses.values())
    return res.rps, used / hz * 1000 / max(count, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--seconds", type=float, help="override each run's duration")
    args = ap.parse_args()
    rounds, seconds = (3, 4.0) if args.quick else (5, 10.0)
    rounds, seconds = args.rounds or rounds, args.seconds or seconds
    sys.path.insert(0, str(REPO))
    from tests.harness.proxy import ProxyHome

    with tempfile.TemporaryDirectory(prefix="vp-bench-minted-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # nginx workers run as an unprivileged user when we are root
        nginx = Nginx(work / "nginx").start()
        try:
            value = "vpbench_static_" + os.urandom(8).hex()
            home = ProxyHome.create(
                work, SERVICES.format(port=nginx.port),
                {"hi": value, "mt": {"client_id": "bench", "client_secret": "vpbench_cs_secret"}},
                files={"upstream-ca.pem": nginx.ca_file.read_bytes()},
            )
            vhome = VaultproxyHome(home.path, home.password_file, {"hi": value, "mt": ""})
            proxy = Vaultproxy("vp-minted", "vaultproxy", nginx, work / "vp")
            proxy.home = vhome
            proxy.start()
            try:
                run_hey("https://mt.bench.test/auth", proxy=proxy.proxy, conns=1, count=1)
                if nginx.last_authorization() != "Bearer vpbench_minted_access_token":
                    raise RuntimeError("mt: nginx did not receive the minted token")
                rows: dict[str, list[tuple[float, float]]] = {"hi": [], "mt": []}
                for _ in range(rounds):
                    for service in ("hi", "mt"):
                        rows[service].append(measure(proxy, service, seconds))
            finally:
                proxy.stop()
        finally:
            nginx.stop()
    med = {s: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
           for s, v in rows.items()}
    print(f"rounds: {rounds} x {seconds:g} s each way, hey -c 10 keep-alive, GET /1k")
    print("| service | req/s (median) | proxy CPU ms/req (median) |")
    print("|---|---|---|")
    for service, label in (("hi", "static bearer"), ("mt", "minted, cached token")):
        rps, cpu = med[service]
        print(f"| {label} | {rps:.0f} | {cpu:.3f} |")
    ratio = med["mt"][1] / med["hi"][1]
    print(f"minted / static CPU per request: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    print(f"minted / static req/s: {med['mt'][0] / med['hi'][0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
