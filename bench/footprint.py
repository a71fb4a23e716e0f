# ruff: noqa: E501  (table labels)
"""What `vaultproxy run` costs to start and to hold: start-up time, RSS per process at start,
RSS growth over 100 MB streamed, and the unlock KDF on its own. A/B between source trees,
interleaved, like bench/lean.py.

    .venv/bin/python bench/footprint.py                                  # this checkout, 3 rounds
    .venv/bin/python bench/footprint.py --tree main=/tmp/main-src --tree lean=. --rounds 4

Per round, per tree (A, B, A, B, ...), against one nginx:

  start       `vaultproxy run --workers 1` and `--workers 2`: wall seconds from exec to
              run.json naming the pid, the supervisor's own CPU seconds until then (utime +
              stime from /proc: steadier than wall time on a loaded machine), the workers'
              CPU seconds at that moment, and the wall time to the first 200 through it
  RSS         VmRSS of every process (run.json's pid and worker pids) when run.json is
              written (no request served yet), and VmRSS and Pss (/proc/PID/smaps_rollup)
              after 200 more requests on 10 connections (every process has served some)
  stream      `--workers 1`: one 100 MB GET (nginx /big) and one 100 MB PUT through the
              proxy (host_inject), then both again; VmRSS before, VmHWM peak (reset just
              before through /proc/PID/clear_refs) and VmRSS after, in MiB: the second pass
              shows whether the first one's growth is a one-time allocation or a leak
  kdf         the same start against a home whose keystore has the real Argon2id profile
              (the bench homes use the harness's cheap test KDF): start-up with the KDF in
              it. The KDF alone (Keystore.open in this process, CPU seconds) is printed once.
The load average is printed beside every row; the machine is shared."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import TreeProxy, compile_tree, cpu_seconds, load
from bench.load import run_hey, sequential
from bench.run import reset_peak, rss_kib
from bench.targets import VaultproxyHome
from bench.upstream import BIG_BYTES, Nginx, stop_process


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


class FootprintProxy(TreeProxy):
    """`vaultproxy run --workers N` from a source tree; keeps run.json's worker pids."""

    worker_pids: tuple[int, ...] = ()

    def start(self) -> None:
        assert self.home is not None
        super().start()
        assert self.proc is not None
        data = json.loads((self.home.path / "run.json").read_text())
        self.worker_pids = tuple(int(p) for p in data.get("worker_pids", []) if p != self.proc.pid)


def start(tree: Path, name: str, home: VaultproxyHome, nginx: Nginx, work: Path, workers: int) -> FootprintProxy:
    t = FootprintProxy(f"vp-{name}", name, nginx, work)
    t.home, t.service, t.tree, t.workers = home, "hi", tree, workers
    t.start()
    return t


def measure_start(t: FootprintProxy) -> dict[str, float]:
    assert t.proc is not None
    pid = t.proc.pid
    workers_cpu = [cpu_seconds(p) for p in t.worker_pids]
    pids = [pid, *t.worker_pids]
    time.sleep(0.3)
    ready_rss = [(rss_kib(p, "VmRSS") or 0) / 1024 for p in pids]  # before any request
    first = sequential(t.base, "/1k", proxy=t.proxy, headers=(), count=1, limit_s=30)
    first_200 = t.ready_s + (first.p50_ms / 1000 if first.ok() else float("nan"))
    run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=200)  # every process serves some
    time.sleep(0.3)
    rss = [(rss_kib(p, "VmRSS") or 0) / 1024 for p in pids]
    pss = [pss_mib(p) for p in pids]
    return {
        "ready_rss0": ready_rss[0],
        "ready_rss_worker": max(ready_rss[1:], default=ready_rss[0]),
        "ready": t.ready_s,
        "ready_cpu": t.ready_cpu_s,
        "workers_cpu": max(workers_cpu, default=0.0),
        "first200": first_200,
        "rss0": rss[0],
        "rss_worker": max(rss[1:], default=rss[0]),
        "pss0": pss[0],
        "pss_worker": max(pss[1:], default=pss[0]),
    }


def measure_stream(t: FootprintProxy, nginx: Nginx) -> dict[str, float]:
    assert t.proc is not None
    pid = t.proc.pid
    out: dict[str, float] = {}
    for kind in ("get", "put", "get2", "put2"):  # the second pass: growth after the first
        time.sleep(0.3)
        before = (rss_kib(pid, "VmRSS") or 0) / 1024
        reset_peak(pid)
        if kind.startswith("get"):
            res = run_hey(t.base + "/big", proxy=t.proxy, count=1, conns=1, timeout_s=180)
        else:
            nginx.clear_uploads()
            res = run_hey(t.base + "/upload", proxy=t.proxy, count=1, conns=1, timeout_s=180,
                          method="PUT", body_file=str(nginx.big_file))  # fmt: skip
        ok = all(s in (200, 201, 204) for s in res.statuses) and bool(res.statuses)
        peak = (rss_kib(pid, "VmHWM") or 0) / 1024
        time.sleep(0.3)
        after = (rss_kib(pid, "VmRSS") or 0) / 1024
        out[f"{kind}_ok"] = float(ok)
        out[f"{kind}_mbps"] = BIG_BYTES / 1e6 / res.total_s if res.total_s else float("nan")
        out[f"{kind}_before"], out[f"{kind}_peak"], out[f"{kind}_after"] = before, peak, after
        out[f"{kind}_growth"] = peak - before
    return out


def real_kdf_home(home: VaultproxyHome, base: Path) -> tuple[VaultproxyHome, float, float]:
    """A copy of ``home`` whose keystore is re-saved with the real Argon2id profile (a save
    raises weaker parameters to the floor); and the KDF alone: CPU and wall seconds of one
    ``Keystore.open`` of it in this process."""
    from vaultproxy.keystore import Keystore
    from vaultproxy.secret import Secret

    dst = base / "home-kdf"
    shutil.copytree(home.path, dst, symlinks=True)
    pw_file = dst / home.password_file.name if home.password_file.is_relative_to(home.path) else home.password_file
    password = home.password_file.read_text().strip()
    ks = Keystore.open(dst / "keystore.enc", Secret(password))
    ks.save()
    kdf = ks.kdf
    c0, w0 = time.process_time(), time.monotonic()
    Keystore.open(dst / "keystore.enc", Secret(password))
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    print(f"real KDF: {kdf}; Keystore.open alone {cpu:.2f} CPU s, {wall:.2f} s wall; load {load()}", flush=True)
    return VaultproxyHome(dst, pw_file, dict(home.secrets)), cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-stream", action="store_true", help="skip the 100 MB GET/PUT")
    ap.add_argument("--no-kdf", action="store_true", help="skip the start with the real KDF")
    args = ap.parse_args()
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    for _, tree in trees:
        compile_tree(tree)  # starts run from cached bytecode, as an installed package does
    work = Path(tempfile.mkdtemp(prefix="vp-footprint-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        kdf_home = None if args.no_kdf else real_kdf_home(home, work)[0]
        for r in range(args.rounds):
            for name, tree in trees:
                for workers in (1, 2):
                    key = f"{name} w{workers}"
                    t = start(tree, name, home, nginx, work, workers)
                    try:
                        m = measure_start(t)
                        if workers == 1 and not args.no_stream:
                            m.update(measure_stream(t, nginx))
                    finally:
                        t.stop()
                    rows.setdefault(key, []).append(m)
                    line = (f"round {r + 1} {key:>10}: run.json {m['ready']:.2f} s wall, "
                            f"{m['ready_cpu']:.2f} CPU s (workers {m['workers_cpu']:.2f}), "
                            f"first 200 {m['first200']:.2f} s; RSS at run.json {m['ready_rss0']:.1f} MiB"
                            f", after 200 requests {m['rss0']:.1f} (Pss {m['pss0']:.1f})")
                    if workers > 1:
                        line += (f"; worker RSS at run.json {m['ready_rss_worker']:.1f}, after "
                                 f"{m['rss_worker']:.1f} (Pss {m['pss_worker']:.1f})")
                    if "get_growth" in m:
                        line += (f"; 100 MB GET {m['get_mbps']:.0f} MB/s RSS {m['get_before']:.1f}"
                                 f" -> peak {m['get_peak']:.1f} -> {m['get_after']:.1f}"
                                 f"{'' if m['get_ok'] else ' (FAILED)'}"
                                 f", PUT {m['put_mbps']:.0f} MB/s RSS {m['put_before']:.1f}"
                                 f" -> peak {m['put_peak']:.1f} -> {m['put_after']:.1f}"
                                 f"{'' if m['put_ok'] else ' (FAILED)'}"
                                 f"; again: GET +{m['get2_growth']:.1f}, PUT +{m['put2_growth']:.1f} MiB")
                    print(f"{line}; load {load()}", flush=True)
                if kdf_home is not None:
                    key = f"{name} kdf"
                    t = start(tree, name, kdf_home, nginx, work, 1)
                    try:
                        m = measure_start(t)
                    finally:
                        t.stop()
                    rows.setdefault(key, []).append(m)
                    print(f"round {r + 1} {key:>10}: run.json {m['ready']:.2f} s wall, "
                          f"{m['ready_cpu']:.2f} CPU s, first 200 {m['first200']:.2f} s, "
                          f"RSS {m['rss0']:.1f} MiB; load {load()}", flush=True)
        print("\nmedians:")
        for key, ms in rows.items():
            med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
            print(f"{key:>10}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
