"""Instructions per request of `vaultproxy run --workers 1`, A/B, under callgrind: a count
that does not move with the machine's load (wall and /proc CPU do, on a shared machine).

    .venv/bin/python bench/callgrind.py --tree stock=. --tree lean=. \\
        --env stock:VAULTPROXY_LEAN_HTTP1=0 -n 400

Per tree: the proxy starts under `valgrind --tool=callgrind --instr-atstart=no`
(``PYTHONMALLOC=malloc``, so libc malloc shows), answers 100 warm-up requests (`hey -c 10`),
then instrumentation is switched on (`callgrind_control -i on`), `hey -c 10 -n N` runs, the
counters are dumped and the total Ir divided by N. 1 KB GETs to nginx over TLS, keep-alive."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import TreeProxy, load, workers_by_tree, workers_for
from bench.load import run_hey
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process


def start_under_callgrind(t: TreeProxy, out: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`vaultproxy run --workers 1` (``t.workers``) from ``t``'s tree under ``valgrind
    --tool=callgrind --instr-atstart=no`` (``PYTHONMALLOC=malloc``; its log beside ``out``):
    the process and its proxy URL once run.json names it (``t.worker_pids`` the others'
    pids: with ``--workers N`` valgrind follows the worker processes too, one out file per
    pid). Instrumentation stays off until ``callgrind_control -i on`` (``instrumented`` of
    every pid: ``[proc.pid, *t.worker_pids]``); ``stop_and_count`` ends it."""
    assert t.home is not None
    run_json = t.home.path / "run.json"
    run_json.unlink(missing_ok=True)
    many = t.workers > 1
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p" if many else f"--callgrind-out-file={out}",
        *(["--trace-children=yes"] if many else []),
        sys.executable, "-m", "vaultproxy", "run", "--home", str(t.home.path),
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--dashboard-listen", "",
        "--password-file", str(t.home.password_file), "--workers", str(t.workers),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(t.tree), PYTHONMALLOC="malloc", **(t.extra_env or {}))
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=t.tree, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError(f"no run.json; see {log.name}")
            try:
                data = json.loads(run_json.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = {}
            if data.get("pid") == proc.pid:
                t.worker_pids = tuple(data.get("worker_pids", []))
                return proc, str(data["proxy_url"])
            time.sleep(0.2)
    except BaseException:
        proc.terminate()
        proc.wait(120)
        raise


def instrumented(pid: int | list[int], on: bool) -> None:
    """``callgrind_control -i on|off PID`` (each of a list: every process of ``--workers N``;
    never without a pid, which would switch other people's callgrind runs too)."""
    for one in [pid] if isinstance(pid, int) else pid:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(one)],
                       check=True, capture_output=True)


def stop_and_count(proc: subprocess.Popen[bytes], out: Path,
                   by_pid: dict[str, int] | None = None) -> int:
    """End the proxy (its counters are dumped as it exits); the total Ir of its out files
    (the largest one's; with ``--workers N``, ``out.PID`` per process: their sum, and each
    in ``by_pid``). The supervisor's SIGTERM stops its workers; they exit first."""
    proc.terminate()
    proc.wait(120)
    total = 0
    per_pid = 0
    for f in out.parent.glob(out.name + "*"):
        if f.suffix == ".log":
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"totals: (\d+)", line)
            if m:
                if f.suffix[1:].isdigit():  # out.PID: one process of --workers N
                    per_pid += int(m.group(1))
                    if by_pid is not None:
                        by_pid[f.suffix[1:]] = int(m.group(1))
                else:
                    total = max(total, int(m.group(1)))
                break
    return total + per_pid


def instructions(t: TreeProxy, out: Path, n: int) -> float:
    proc, proxy = start_under_callgrind(t, out)
    ok = 0
    try:
        run_hey(t.base + "/1k", proxy=proxy, conns=10, count=100, timeout_s=600)
        instrumented([proc.pid, *t.worker_pids], True)
        res = run_hey(t.base + "/1k", proxy=proxy, conns=10, count=n, timeout_s=900)
        instrumented([proc.pid, *t.worker_pids], False)
        ok = res.statuses.get(200, 0)
    finally:
        total = stop_and_count(proc, out)
    return total / max(ok, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--env", action="append", default=[], help="name:KEY=VALUE")
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--workers", action="append", default=[], metavar="[name:]N",
                    help="`--workers N` for every tree, or one (name:N; default 1): "
                    "instructions summed over all N processes")
    args = ap.parse_args()
    workers = workers_by_tree(args.workers)
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        envs.setdefault(name, {})[key] = value
    work = Path(tempfile.mkdtemp(prefix="vp-callgrind-"))
    work.chmod(0o755)
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        for name, tree in trees:
            t = TreeProxy(f"vp-{name}", name, nginx, work)
            t.home, t.service, t.tree, t.extra_env = home, "hi", tree, envs.get(name)
            t.workers = workers_for(workers, name)
            per = instructions(t, work / f"callgrind.{name}.out", args.n)
            print(f"{name:>8}: {per / 1e6:.3f} M instructions per request; load {load()}",
                  flush=True)
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
