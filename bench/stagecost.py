# ruff: noqa: E501  (table labels)
"""What one 1 KB keep-alive request costs `vaultproxy run --workers 1`, A/B between source
trees: instructions (callgrind: does not move with the machine's load) and CPU time (/proc).

    .venv/bin/python bench/stagecost.py --tree main=/tmp/main-src --tree this=. --callgrind
    .venv/bin/python bench/stagecost.py --tree main=/tmp/main-src --tree this=. --proc --rounds 4
    .venv/bin/python bench/stagecost.py --profile /tmp/vp.prof      # cProfile of this tree

Each tree is a checkout (`git archive main | tar -x -C /tmp/main-src`); every round starts the
proxy from each tree in turn (A, B, A, B, ...) against one nginx and one home (service ``hi``,
host_inject, bearer; the upstream pool on, as by default).

``--callgrind``: the proxy runs under ``valgrind --tool=callgrind --instr-atstart=no``
(``PYTHONMALLOC=malloc``); after start-up and ``--warm`` requests, ``callgrind_control -i on``,
then ``-n`` requests (``hey -c 10``), then a dump: the instructions counted, divided by the
requests that got a 200.

``--proc``: utime+stime of the proxy process (/proc/PID/stat) over ``-n`` requests after a
warm-up, divided by the 200s. The load average is printed beside every figure.

``--profile FILE``: cProfile of the proxy (this tree) over the same load; prints our own
functions by cumulative and by self time per request."""

from __future__ import annotations

import argparse
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import TreeProxy, cpu_seconds, load
from bench.load import run_hey
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process


class Wrapped(TreeProxy):
    """A TreeProxy whose ``python -m vaultproxy run`` is started as ``prefix`` (the
    interpreter, behind valgrind or with cProfile) plus ``-m vaultproxy run ...``."""

    prefix: list[str] = [sys.executable]
    extra_env: dict[str, str] = {}
    uvloop: bool = False  # the tree's name ends in "+uvloop": run it on uvloop's event loop

    def start(self) -> None:  # TreeProxy.start with a prefix and an environment
        import json

        assert self.home is not None
        run_json = self.home.path / "run.json"
        run_json.unlink(missing_ok=True)
        boot = ["-c", UVLOOP_BOOT] if self.uvloop else []
        cmd = [
            *self.prefix, *boot, "-m", "vaultproxy", "run", "--home", str(self.home.path),
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--dashboard-listen", "",
            "--password-file", str(self.home.password_file), "--workers", "1",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(self.tree), **self.extra_env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"vaultproxy-{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.tree, env=env,
        )  # fmt: skip
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vaultproxy exited {self.proc.returncode}; see {log.name}")
            try:
                data = json.loads(run_json.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = {}
            if data.get("proxy_url"):
                self.proxy = data["proxy_url"]
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("no run.json within 300 s")
        self.expect_auth = f"Bearer {self.home.secrets[self.service]}"


# ``python -c BOOT -m vaultproxy run ...``: uvloop's policy, then the module as ``-m`` runs it.
# (For trees older than engine/loop.py: a tree that has it runs on uvloop already, and
# ``VAULTPROXY_UVLOOP=0`` in its environment is what keeps asyncio's loop.)
UVLOOP_BOOT = (
    "import asyncio, runpy, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "sys.argv = sys.argv[2:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def _ok(res: object) -> int:
    return int(getattr(res, "statuses", {}).get(200, 0))


def callgrind(t: Wrapped, n: int, warm: int) -> tuple[float, int]:
    out = t.workdir / f"cg-{t.name}-{time.time_ns()}.out"
    t.prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", "-q", sys.executable]  # fmt: skip
    t.extra_env = {"PYTHONMALLOC": "malloc"}
    t.start()
    assert t.proc is not None
    try:
        res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=warm, timeout_s=600)
        if _ok(res) == 0:
            raise RuntimeError(f"warm-up failed: {res.problem()}")
        pid = str(t.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=n, timeout_s=900)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        ok = _ok(res)
    finally:
        stop_process(t.proc, signal.SIGTERM, wait=120)
        t.proc = None
    total = 0
    for f in out.parent.glob(out.name + "*"):
        text = f.read_text(errors="replace")
        for m in re.finditer(r"^(?:summary|totals): (\d+)", text, re.M):
            total = max(total, int(m.group(1)))  # the dump after the load holds it all
    return total / max(ok, 1), ok


def proc_cpu(t: Wrapped, n: int, warm: int) -> tuple[float, int]:
    t.prefix, t.extra_env = [sys.executable], {}
    t.start()
    assert t.proc is not None
    try:
        run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=warm)
        time.sleep(0.3)
        c0 = cpu_seconds(t.proc.pid)
        res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=n, timeout_s=600)
        c1 = cpu_seconds(t.proc.pid)
    finally:
        t.stop()
    ok = _ok(res)
    return (c1 - c0) * 1000 / max(ok, 1), ok


def profile(t: Wrapped, n: int, warm: int, to: Path) -> None:
    t.prefix = [sys.executable, "-m", "cProfile", "-o", str(to)]
    t.extra_env = {}
    t.start()
    assert t.proc is not None
    try:
        run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=warm)
        res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=n, timeout_s=300)
    finally:
        t.stop()
    ok = _ok(res) + warm
    st = pstats.Stats(str(to))
    raw = dict(st.stats)  # type: ignore[attr-defined]
    ours = [(k, v) for k, v in raw.items() if "/vaultproxy/" in k[0] and "<module>" not in k[2]]
    print(f"{ok} requests (warm-up included); our functions, µs per request:")
    for label, idx in (("cumulative", 3), ("self", 2)):
        print(f"\nby {label}:")
        for (fname, line, func), v in sorted(ours, key=lambda kv: kv[1][idx], reverse=True)[:30]:
            short = fname.split("/vaultproxy/", 1)[-1]
            print(f"  {v[idx] * 1e6 / ok:8.1f}  {v[1] / ok:5.1f} calls  {short}:{line} {func}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("-n", type=int, default=0, help="requests measured (default: 400 callgrind, 3000 proc)")
    ap.add_argument("--warm", type=int, default=100)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--callgrind", action="store_true")
    mode.add_argument("--proc", action="store_true")
    mode.add_argument("--profile", type=Path)
    args = ap.parse_args()
    n = args.n or (400 if args.callgrind else 3000)
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    work = Path(tempfile.mkdtemp(prefix="vp-stagecost-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        rows: dict[str, list[float]] = {name: [] for name, _ in trees}
        for r in range(args.rounds):
            for name, tree in trees:
                t = Wrapped(f"vp-{name}", name, nginx, work)
                t.home, t.service, t.tree = home, "hi", tree
                t.uvloop = name.endswith("+uvloop")
                if args.profile is not None:
                    profile(t, n, args.warm, args.profile)
                    return
                before = load()
                if args.callgrind:
                    value, ok = callgrind(t, n, args.warm)
                    shown = f"{value / 1e6:.3f} M instructions/request"
                else:
                    value, ok = proc_cpu(t, n, args.warm)
                    shown = f"{value:.3f} ms CPU/request"
                rows[name].append(value)
                print(f"round {r + 1} {name:>8}: {shown} ({ok} ok); load {before} -> {load()}",
                      flush=True)
        print("\nmedians:")
        for name, vs in rows.items():
            med = statistics.median(vs)
            print(f"{name:>8}: " + (f"{med / 1e6:.3f} M instructions/request" if args.callgrind
                                   else f"{med:.3f} ms CPU/request") + f"  ({len(vs)} rounds)")
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
