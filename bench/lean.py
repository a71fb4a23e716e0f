# ruff: noqa: E501  (table labels)
"""Per-request cost of `vaultproxy run`, A/B between source trees, interleaved.

    .venv/bin/python bench/lean.py                       # this checkout only, 3 rounds
    .venv/bin/python bench/lean.py --tree main=/tmp/main-src --tree lean=. --rounds 4
    .venv/bin/python bench/lean.py --tree stock=. --tree lean=. --env stock:VAULTPROXY_LEAN_HTTP1=0
    .venv/bin/python bench/lean.py --tree w1=. --tree w2=. --workers w2:2   # --workers 2 vs 1
    .venv/bin/python bench/lean.py --tree shared=. --tree static=. --python static=/tmp/vp-static/venv/bin/python
                                              # the interpreter build (bench/static_python.py)

Each tree is a checkout of vaultproxy (e.g. `git archive main | tar -x -C /tmp/main-src`); every
round starts `vaultproxy run --workers 1` (``--workers [name:]N``) from each tree in turn (A, B, A, B, ...) against the
same nginx and home, so load drift on this shared machine hits both alike. Per start:

  ready       seconds from exec to run.json written (and the process's CPU seconds until
              then, steadier on a loaded machine), and to the first 200 through the proxy
  RSS start   VmRSS of the proxy process once it answered that first request
  CPU/req     utime+stime of the proxy process(es: all N) (/proc/PID/stat) over a fixed number of 1 KB
              keep-alive GETs on 10 connections, divided by N; "sys" is the stime part. The
              client (``--client``): bench/keepalive.py (default: exactly 10 connections,
              in its own process) or `hey -c 10 -n N` (Go's transport sometimes dials a
              spare connection per request and drops it before TLS: such runs read high).
              "new conns": TCP connections the machine accepted meanwhile (10 is the
              keep-alive ideal; hundreds: hey's spare dials, see passive_opens), and for
              keepalive.py the connections it opened
  p50/p99     one keep-alive connection, sequential GETs (http.client, perf_counter); "added"
              subtracts the direct p50 measured in the same round
The load average is printed beside every row."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import HeyResult, run_hey, run_keepalive, sequential
from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx, stop_process

TICK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process: the kernel's share (send/recv on loopback
    also runs the peer's TCP receive path) is a floor no change in Python can lower."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def cpu_split_all(pids: list[int]) -> tuple[float, float]:
    """``cpu_split`` summed over the processes (``--workers N``: all N)."""
    splits = [cpu_split(pid) for pid in pids]
    return sum(u for u, _ in splits), sum(s for _, s in splits)


def workers_by_tree(specs: list[str]) -> dict[str, int]:
    """``--workers`` values: ``N`` (every tree) or ``name:N`` (one tree; repeatable); a tree
    without one runs ``--workers 1``. Keys: tree names, ``""`` for every tree."""
    out: dict[str, int] = {}
    for spec in specs:
        name, _, count = spec.rpartition(":")
        out[name] = int(count)
    return out


def workers_for(workers: dict[str, int], name: str) -> int:
    return workers.get(name, workers.get("", 1))


def passive_opens() -> int:
    """The kernel's count of TCP connections accepted on this machine (/proc/net/snmp).
    Over a `hey` run it counts the client's new connections to the proxy (plus any upstream
    dial nginx accepts): Go's transport sometimes dials a spare connection per request,
    sends CONNECT and drops it before TLS (a client-side race), and those cost the proxy
    CPU that is not the keep-alive request's. A run with many is not comparable."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> str:
    return "/".join(Path("/proc/loadavg").read_text().split()[:3])


class TreeProxy(Vaultproxy):
    """`vaultproxy run` from another source tree (cwd and PYTHONPATH = that tree)."""

    tree: Path = Path(".")
    extra_env: dict[str, str] | None = None
    ready_s: float = 0.0
    ready_cpu_s: float = 0.0  # the process's own CPU time until run.json (steadier under load)
    workers: int = 1
    path_prefix: str = ""  # directories ahead of the tree on PYTHONPATH (bench/hooktimes.py)
    python: str = sys.executable  # the interpreter (--python: bench/static_python.py's venv)

    def start(self) -> None:
        assert self.home is not None
        run_json = self.home.path / "run.json"
        run_json.unlink(missing_ok=True)
        cmd = [
            self.python, "-m", "vaultproxy", "run", "--home", str(self.home.path),
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--dashboard-listen", "",
            "--password-file", str(self.home.password_file), "--workers", str(self.workers),
        ]  # fmt: skip
        path = f"{self.path_prefix}{os.pathsep}{self.tree}" if self.path_prefix else str(self.tree)
        env = dict(os.environ, PYTHONPATH=path, **(self.extra_env or {}))
        # Cached bytecode, as an installed package runs (pip compiles at install): with
        # PYTHONDONTWRITEBYTECODE set (as in this sandbox) every start would compile all of
        # vaultproxy's ~200 modules from source first (~0.5 CPU s). compile_tree() fills it.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"vaultproxy-{self.name}.log", "ab")  # noqa: SIM115
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.tree, env=env,
        )  # fmt: skip
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vaultproxy exited {self.proc.returncode}; see {log.name}")
            try:
                data = json.loads(run_json.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = {}
            if data.get("pid") == self.proc.pid:
                self.proxy = data["proxy_url"]
                self.worker_pids = tuple(data.get("worker_pids", []))
                self.ready_cpu_s = cpu_seconds(self.proc.pid)
                break
            time.sleep(0.005)
        else:
            raise RuntimeError("no run.json within 60 s")
        self.ready_s = time.monotonic() - t0
        self.expect_auth = f"Bearer {self.home.secrets[self.service]}"


def compile_tree(tree: Path) -> None:
    """Write the tree's bytecode now, so no measured start compiles (see TreeProxy.start)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", str(tree / "vaultproxy")],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def keepalive_load(client: str, url: str, proxy: str | None, count: int) -> HeyResult:
    """``count`` 1 KB keep-alive GETs on 10 connections from ``client`` ("ours": bench/
    keepalive.py; "hey")."""
    if client == "hey":
        return run_hey(url, proxy=proxy, conns=10, count=count)
    return run_keepalive(url, proxy=proxy, conns=10, count=count)


def measure(t: TreeProxy, n: int, seq_n: int, direct_p50: float,
            client: str = "ours") -> dict[str, float]:
    t0 = time.monotonic()
    t.start()
    assert t.proc is not None
    pid = t.proc.pid
    pids = t.pids  # with --workers N: every process (CPU summed over all of them)
    first = sequential(t.base, "/1k", proxy=t.proxy, headers=(), count=1, limit_s=20)
    first_200 = (t.ready_s if first.ok() else float("nan")) + first.p50_ms / 1000
    first_200 = time.monotonic() - t0
    time.sleep(0.3)
    rss = rss_mib(pid)
    keepalive_load(client, t.base + "/1k", t.proxy, 300)  # warm: leaves, connections
    time.sleep(0.3)
    u0, s0 = cpu_split_all(pids)
    opens = passive_opens()
    res = keepalive_load(client, t.base + "/1k", t.proxy, n)
    u1, s1 = cpu_split_all(pids)
    opens = passive_opens() - opens
    c0, c1 = u0 + s0, u1 + s1
    ok = sum(v for k, v in res.statuses.items() if k == 200)
    seq = sequential(t.base, "/1k", proxy=t.proxy, headers=(), count=seq_n, limit_s=30)
    t.stop()
    return {
        "ready": t.ready_s,
        "ready_cpu": t.ready_cpu_s,
        "first200": first_200,
        "rss": rss,
        "cpu_ms": (c1 - c0) * 1000 / max(ok, 1),
        "sys_ms": (s1 - s0) * 1000 / max(ok, 1),
        "opens": opens,
        "opened": float(res.conns_opened) if res.conns_opened is not None else float("nan"),
        "ok": ok,
        "p50": seq.p50_ms,
        "p99": seq.p99_ms,
        "added": seq.p50_ms - direct_p50,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--env", action="append", default=[],
                    help="name:KEY=VALUE, an environment variable for that tree's proxy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=4000, help="requests per CPU measurement")
    ap.add_argument("--seq", type=int, default=1500, help="sequential requests per p50")
    ap.add_argument("--client", choices=("ours", "hey"), default="ours",
                    help="the keep-alive load client: bench/keepalive.py (default) or hey")
    ap.add_argument("--workers", action="append", default=[], metavar="[name:]N",
                    help="`vaultproxy run --workers N` for every tree, or for one tree "
                    "(name:N, repeatable; default 1); CPU is summed over all N processes")
    ap.add_argument("--python", action="append", default=[], metavar="name=PATH",
                    help="that tree's proxy runs under PATH (a venv's python with the same "
                    "packages, e.g. bench/static_python.py's; default: this interpreter)")
    args = ap.parse_args()
    workers = workers_by_tree(args.workers)
    pythons = dict(s.split("=", 1) for s in args.python)
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    for _, tree in trees:
        compile_tree(tree)
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        envs.setdefault(name, {})[key] = value
    work = Path(tempfile.mkdtemp(prefix="vp-lean-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
        for r in range(args.rounds):
            direct = sequential(f"https://127.0.0.1:{nginx.port}", "/1k", proxy=None,
                                headers=(), count=args.seq, limit_s=30)  # fmt: skip
            for name, tree in trees:
                t = TreeProxy(f"vp-{name}", name, nginx, work)
                t.home, t.service, t.tree = home, "hi", tree
                t.extra_env = envs.get(name)
                t.workers = workers_for(workers, name)
                t.python = pythons.get(name, sys.executable)
                try:
                    m = measure(t, args.n, args.seq, direct.p50_ms, args.client)
                finally:
                    t.stop()
                rows[name].append(m)
                print(
                    f"round {r + 1} {name:>8}: CPU {m['cpu_ms']:.3f} ms/req (sys {m['sys_ms']:.3f}; {m['ok']:.0f} ok, "
                    f"{m['opens']:.0f} new conns"
                    + (f", {m['opened']:.0f} opened by the client" if m["opened"] == m["opened"] else "")
                    + "), "
                    f"p50 {m['p50']:.3f} ms (direct {direct.p50_ms:.3f}, added {m['added']:.3f}), "
                    f"p99 {m['p99']:.3f}, RSS {m['rss']:.1f} MiB, ready {m['ready']:.2f} s "
                    f"(CPU {m['ready_cpu']:.2f} s), first 200 {m['first200']:.2f} s; load {load()}",
                    flush=True,
                )
        print("\nmedians:")
        for name, ms in rows.items():
            med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
            print(
                f"{name:>8}: CPU {med['cpu_ms']:.3f} ms/req (sys {med['sys_ms']:.3f}), added p50 {med['added']:.3f} ms, "
                f"p99 {med['p99']:.3f}, RSS {med['rss']:.1f} MiB, ready {med['ready']:.2f} s "
                f"(CPU {med['ready_cpu']:.2f} s), "
                f"first 200 {med['first200']:.2f} s"
            )
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
