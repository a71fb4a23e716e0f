"""Soak: many connections for a long time, then count what happened (issue 15).

    .venv/bin/python bench/soak.py            # 10 min: 5 min per worker count (1, then 2)
    .venv/bin/python bench/soak.py --quick    # 30 s each
    .venv/bin/python bench/soak.py --seconds 120 --conns 50 --workers 2
    .venv/bin/python bench/soak.py --faults [--quick]   # kill, stop, fd squeeze, upstream down

An nginx upstream (bench/upstream.py; `/auth` answers 204 and logs each Authorization it
receives) behind `vaultproxy run` (host_inject, bearer), loaded by `hey` with keep-alive
connections for the whole duration. Per worker count: requests and req/s, responses by
status, hey's errors, the audit's records by status and error code, how many requests the
upstream logged against how many `request` (and `forward`) records audit.jsonl holds for
them (they must be equal: every use of the credential is audited), and the drift of RSS
and open file descriptors (summed over the proxy's processes) from after a warm-up to the
end. Needs: nginx-light and hey (Debian). All on 127.0.0.1.

``--faults`` runs the fault schedule of bench/faults.py instead (Python load, no hey): the
unanswered requests, the unaudited forwards (both goal 0) and the time to recover from each.
"""

# ruff: noqa: E501  (table rows)
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import run_hey
from bench.run import rss_kib, settle
from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(pids: list[int]) -> tuple[float, int]:
    return sum(rss_kib(p, "VmRSS") or 0 for p in pids) / 1024, sum(fds(p) for p in pids)


def audit_counts(home: Path, path: str) -> Counter[str]:
    """Records for ``path``: "request", "forward", and "request <status> <reason>"."""
    out: Counter[str] = Counter()
    for name in ("audit.jsonl.5", "audit.jsonl.4", "audit.jsonl.3", "audit.jsonl.2",
                 "audit.jsonl.1", "audit.jsonl"):
        try:
            lines = (home / name).read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("path") != path:
                continue
            event = str(rec.get("event"))
            out[event] += 1
            if event == "request":
                out[f"{rec.get('status')} {rec.get('reason') or rec.get('outcome')}"] += 1
    return out


def audited(home: Path, path: str) -> int:
    return audit_counts(home, path)["request"]


def audit_metrics(home: Path) -> dict[str, float]:
    """The proxy's own audit counters (``/metrics``, every process): records written,
    failed, dropped. Unlike the files, they do not lose what rotation pushed out."""
    run = json.loads((home / "run.json").read_text())
    token = (home / "admin-token").read_text().strip()
    text = httpx.get(run["admin_url"] + "/metrics", headers={"Authorization": f"Bearer {token}"},
                     timeout=60, trust_env=False).text
    out = {"written": 0.0, "failed": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"vaultproxy_audit_records_{key}_total "):
                out[key] = float(line.split()[-1])
    return out


def soak(nginx: Nginx, home: VaultproxyHome, work: Path, workers: int, seconds: float,
         conns: int) -> dict[str, object]:
    t = Vaultproxy(name=f"soak-{workers}", label="", nginx=nginx, workdir=work)
    t.home, t.service, t.workers = home, "hi", workers
    t.start()
    try:
        # Warm up on /1k: neither nginx's auth.log nor the /auth audit count sees it.
        run_hey(t.base + "/1k", proxy=t.proxy, conns=conns, duration_s=min(10.0, seconds / 6))
        settle(t.pids)
        up0, audit0 = nginx.auth_lines(), audit_counts(home.path, "/auth")
        m0 = audit_metrics(home.path)
        rss0, fd0 = sample(t.pids)
        t0 = time.monotonic()
        res = run_hey(t.base + "/auth", proxy=t.proxy, conns=conns, duration_s=seconds, timeout_s=30)
        elapsed = time.monotonic() - t0
        settle(t.pids)
        m1 = audit_metrics(home.path)
        rss1, fd1 = sample(t.pids)
        pids = list(t.pids)
    finally:
        t.stop()  # SIGTERM: the audit log is flushed before exit
    upstream = nginx.auth_lines() - up0
    counts = audit_counts(home.path, "/auth")
    counts.subtract(audit0)
    audit = counts["request"]  # in the files still there (rotation drops the oldest)
    written = {k: int(m1[k] - m0[k]) for k in m0}
    codes = {k: v for k, v in counts.items() if " " in k and v}
    return {
        "workers": workers, "pids": len(pids), "seconds": round(elapsed, 1),
        "requests": sum(res.statuses.values()), "rps": round(res.rps, 1),
        "statuses": res.statuses, "errors": res.errors[:5],
        "upstream": upstream, "audited": audit, "forwards": counts["forward"],
        "codes": codes, "written": written,
        "rss_mib": (round(rss0, 1), round(rss1, 1)), "fds": (fd0, fd1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="30 s per worker count")
    ap.add_argument("--seconds", type=float, default=300.0,
                    help="per worker count (default 300: 10 minutes with the two counts)")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--workers", type=int, action="append", help="repeatable; default 1 and 2")
    ap.add_argument("--faults", action="store_true",
                    help="the fault schedule (bench/faults.py) against --workers 2")
    args = ap.parse_args(argv)
    if args.faults:
        return faults_main(quiet=3.0 if args.quick else 15.0)
    seconds = 30.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory(prefix="vp-soak-") as tmp:
        base = Path(tmp)
        nginx = Nginx(base / "nginx").start()
        try:
            home = VaultproxyHome.create(base / "vp", nginx)
            rows = [soak(nginx, home, base / "work", w, seconds, args.conns)
                    for w in (args.workers or [1, 2])]
        finally:
            nginx.stop()
    load = os.getloadavg()[0]
    print(f"soak: {args.conns} keep-alive connections, {seconds:g} s per worker count, load {load:.1f}")
    print("| workers | requests | req/s | responses | hey errors | upstream saw | audit records written (failed, dropped) | in the kept files: request (forward) records, by status/code | RSS MiB start -> end | fds start -> end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))  # type: ignore[attr-defined]
        errors = "; ".join(r["errors"]) or "0"  # type: ignore[arg-type]
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items()))  # type: ignore[attr-defined]
        w = r["written"]
        print(
            f"| {r['workers']} | {r['requests']} | {r['rps']} | {statuses} | {errors} | "
            f"{r['upstream']} | {w['written']} ({w['failed']}, {w['dropped']}) | "  # type: ignore[index]
            f"{r['audited']} ({r['forwards']}), {codes} | "
            f"{r['rss_mib'][0]} -> {r['rss_mib'][1]} | "  # type: ignore[index]
            f"{r['fds'][0]} -> {r['fds'][1]} |"  # type: ignore[index]
        )
    # Each request writes two records: "forward" before it leaves, "request" after.
    bad = [r for r in rows if r["errors"] or r["written"]["written"] != 2 * r["upstream"]  # type: ignore[index]
           or r["written"]["failed"] or r["written"]["dropped"]]  # type: ignore[index]
    print("every upstream request audited (2 records each), no errors:",
          "yes" if not bad else "NO")
    return 0 if not bad else 1


def faults_main(quiet: float) -> int:
    from bench.faults import run_schedule

    with tempfile.TemporaryDirectory(prefix="vp-faults-") as tmp:
        base = Path(tmp)
        nginx = Nginx(base / "nginx").start()
        try:
            home = VaultproxyHome.create(base / "vp", nginx)
            t = Vaultproxy(name="faults", label="", nginx=nginx, workdir=base / "work")
            t.home, t.service, t.workers = home, "hi", 2
            t.start()
            try:
                r = run_schedule(t, nginx, quiet)
            finally:
                t.stop()
                log = (base / "work" / "vaultproxy-faults.log").read_text(errors="replace")
                for line in log.splitlines():  # what the proxy said about the faults
                    if any(w in line for w in ("worker", "overload", "timeout", "refused",
                                               "Error", "Traceback")):
                        print("  proxy:", line[:200])
            forwards = audit_counts(home.path, "/auth")["forward"]
        finally:
            nginx.stop()
    unaudited = max(0, int(r["upstream"]) - forwards)  # type: ignore[call-overload]
    unanswered = sum(r["unanswered"].values())  # type: ignore[attr-defined]
    print(f"faults: {r['sent']} requests, answered {r['statuses']}, "
          f"unanswered {unanswered} {r['unanswered'] or ''}")
    print(f"upstream received {r['upstream']}, forward records {forwards}, "
          f"unaudited forwards {unaudited}")
    for name, secs in r["recover"].items():  # type: ignore[attr-defined]
        print(f"  {name:9} recovered in {'never' if secs is None else f'{secs:.1f} s'}")
    return 0 if unaudited == 0 and None not in r["recover"].values() else 1  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
