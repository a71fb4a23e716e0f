# ruff: noqa: E501  (table labels)
"""CPU time per hook handler per request of `vaultproxy run --workers 1`, A/B between trees:
which stage (ours, or one of mitmproxy's default addons) costs what on the keep-alive path.

    .venv/bin/python bench/hooktimes.py                              # this tree
    .venv/bin/python bench/hooktimes.py --tree base=/tmp/base --tree now=. -n 4000

The proxy starts with a ``sitecustomize`` (a temporary directory first on PYTHONPATH; the
tree's code is not changed) that wraps the indexed hook dispatch (seam/dispatch.py): each
synchronous handler call is timed with the event loop thread's own CPU clock
(``time.thread_time_ns``: steadier on a loaded machine than wall time) and totalled per
(hook, handler); a coroutine handler is timed up to its first ``await`` only, so the upstream
exchange's wait is never counted. The totals are written to a file every second; the bench
reads them after a warm-up and after ``hey -c 10 -n N`` (1 KB GETs over keep-alive to nginx)
and prints the difference per request, largest first, with the process's whole CPU time per
request (/proc) beside it: the rest is the engine, TLS, parsing and the upstream client."""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inside import sitecustomize, write_site
from bench.lean import TreeProxy, compile_tree, cpu_split, load
from bench.load import run_hey
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process

SITECUSTOMIZE = sitecustomize('''
import os, threading, time
OUT = os.environ["VP_HOOKTIMES_OUT"]
_tt = time.thread_time_ns
TOTALS = {}

def _dump():
    while True:
        time.sleep(1)
        tmp = OUT + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(repr(dict(TOTALS)))
        os.replace(tmp, OUT)

def _patch(module):
    import inspect
    from mitmproxy import exceptions
    from vaultproxy.seam import dispatch as d
    Coro = d._Coroutine

    def _add(name, func, spent):
        key = (name, getattr(func, "__qualname__", repr(func)))
        got = TOTALS.get(key)
        TOTALS[key] = (got[0] + spent, got[1] + 1) if got else (spent, 1)

    async def _flat(self, event, field, top):
        # the manager's one-field loop (guarded stage bodies with their guard inline), timed
        name = event.name
        arg = getattr(event, field)
        for func, addon, fail, guarded_await in top:
            try:
                if fail is None:
                    t0 = _tt()
                    res = func(arg)
                    _add(name, func, _tt() - t0)
                    if res is not None and (type(res) is Coro or inspect.isawaitable(res)):
                        await res
                    continue
                pending = None
                t0 = _tt()
                try:
                    res = func(addon, arg)
                    _add(name, func, _tt() - t0)
                    if res is not None and (type(res) is Coro or inspect.isawaitable(res)):
                        if guarded_await:
                            await res
                        else:
                            pending = res
                except Exception as err:
                    fail(addon, (arg,), err)
                if pending is not None:
                    await pending
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as err:
                d._addon_error(err)

    async def trigger_event(self, event, lifecycle=False):
        await _timed(self, event)
        if lifecycle:  # (the manager's own ``update`` step after a flow's hook)
            update = self._index.get("update")
            if update is None:
                update = self._handlers(d.hooks.UpdateHook([]))
            if update:
                message = d.hook_args(event)[0]
                if isinstance(message, d.flow.Flow):
                    await _timed(self, d.hooks.UpdateHook([message]))

    async def _timed(self, event):
        if hasattr(self, "_flat_of"):
            field, top = self._flat.get(event.name) or self._flat_of(event)
            if field is not None:
                if top:
                    await _flat(self, event, field, top)
                return
        handlers, args = self._plan(event)
        name = event.name
        for funcs in handlers:
            try:
                for func in funcs:
                    t0 = _tt()
                    res = func(*args)
                    key = (name, getattr(func, "__qualname__", repr(func)))
                    got = TOTALS.get(key)
                    spent = _tt() - t0
                    TOTALS[key] = (got[0] + spent, got[1] + 1) if got else (spent, 1)
                    if res is not None and (type(res) is Coro or inspect.isawaitable(res)):
                        await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as err:
                d._addon_error(err)

    def _run_of(self, event):
        # ``handle_lifecycle`` runs a step generated per addon list (``_unrolled``): here
        # every event goes through the timed loop instead
        def run(event):
            return self.trigger_event(event, True)
        self._runs[event.name] = run
        return run

    d.IndexedAddonManager.trigger_event = trigger_event
    if hasattr(d.IndexedAddonManager, "_run_of"):
        d.IndexedAddonManager._run_of = _run_of
    threading.Thread(target=_dump, daemon=True).start()

''', "vaultproxy.seam.dispatch")


def read_totals(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    for _ in range(50):
        try:
            found: dict[tuple[str, str], tuple[int, int]] = ast.literal_eval(path.read_text())
            return found
        except (FileNotFoundError, SyntaxError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"no hook totals in {path}")


def measure(t: TreeProxy, n: int, out: Path, top: int) -> None:
    t.start()
    assert t.proc is not None
    pid = t.proc.pid
    try:
        run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=500)
        time.sleep(1.5)
        before = read_totals(out)
        u0, s0 = cpu_split(pid)
        res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=n)
        u1, s1 = cpu_split(pid)
        time.sleep(1.5)
        after = read_totals(out)
    finally:
        t.stop()
    ok = max(res.statuses.get(200, 0), 1)
    rows = []
    for key, (ns, calls) in after.items():
        b_ns, b_calls = before.get(key, (0, 0))
        if calls - b_calls:
            rows.append((ns - b_ns, calls - b_calls, key))
    rows.sort(reverse=True)
    hooks_us = sum(r[0] for r in rows) / ok / 1000
    cpu_us = ((u1 + s1) - (u0 + s0)) * 1e6 / ok
    print(
        f"\n{t.name}: {ok} ok; process CPU {cpu_us:.0f} us/request (sys {(s1 - s0) * 1e6 / ok:.0f}), "
        f"handlers {hooks_us:.0f} us/request (load {load()})"
    )
    print("| us/request | calls/request | hook | handler |\n|---:|---:|---|---|")
    for ns, calls, (hook, func) in rows[:top]:
        print(f"| {ns / ok / 1000:.1f} | {calls / ok:.2f} | {hook} | {func} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=4000, help="requests measured")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    for _, tree in trees:
        compile_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="vp-hooks-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    site = write_site(work, SITECUSTOMIZE)
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        for name, tree in trees:
            out = work / f"totals-{name}.txt"
            t = TreeProxy(f"vp-{name}", name, nginx, work)
            t.home, t.service, t.tree = home, "hi", tree
            t.extra_env = {"VP_HOOKTIMES_OUT": str(out)}
            t.path_prefix = str(site)
            measure(t, args.n, out, args.top)
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
