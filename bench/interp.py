"""How much of a request's CPU is the interpreter's build, not our code: one pure-Python
workload timed under several interpreters of the same machine, best of ``--runs``.

    .venv/bin/python bench/interp.py ~/.pyenv/versions/3.11.7/bin/python3 /usr/bin/python3.11

The workload is the kind of Python a proxied request runs (bench/hops.py --calls lists them):
small objects made and read, method calls, dict look-ups, a generator, a bytes regex over
header lines, ``json.dumps`` of a flat record, ``bytes.join``. It runs in a child process per
interpreter and is timed by the CPU time of that process (``time.process_time``, best of
``--runs``), so other processes on the machine move it less than wall time. Compare builds of ONE
Python version (e.g. pyenv's 3.11 against the distribution's 3.11): versions differ in more
than their build. vaultproxy itself needs 3.12+, so it cannot run under this machine's
distribution Python (3.11); the ratio between two 3.11 builds is what this bench can say about
how the interpreter was built (PGO, LTO, a shared or static libpython)."""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKLOAD = r'''
import json, re, time

class Part:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def plus(self, x):
        return self.a + x

def numbers(n):
    for i in range(n):
        yield i

FIELD = re.compile(rb"([A-Za-z-]+): ([^\r\n]*)\r\n")
HEAD = b"Host: api.example\r\nUser-Agent: agent/1.0\r\nAccept: */*\r\n" * 3

def work():
    t = 0
    for i in range(20000):
        p = Part(i, 2)
        t += p.plus(3)
        d = {"status": i, "host": "api.example"}
        d["path"] = d.get("host")
        t += len(json.dumps(d))
        t += len(b"".join(m.group(1) for m in FIELD.finditer(HEAD)))
        t += sum(numbers(5))
    return t

best = float("inf")
for _ in range(RUNS):
    t0 = time.process_time()
    work()
    best = min(best, time.process_time() - t0)
print(best)
'''


def timed(python: str, runs: int) -> float:
    cmd = [python, "-c", WORKLOAD.replace("RUNS", str(runs))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def build(python: str) -> str:
    """The version, and whether the executable loads libpython as a shared library (pyenv's
    ``--enable-shared``: every call into the runtime goes through the PLT) or carries it."""
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    real = subprocess.run([python, "-c", "import sys; print(sys.executable)"], check=True,
                          capture_output=True, text=True).stdout.strip()
    libs = subprocess.run(["ldd", real], capture_output=True, text=True).stdout
    return f"{version}, libpython {'shared' if 'libpython' in libs else 'linked in'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("python", nargs="*", default=[sys.executable],
                    help="interpreters to compare (the first is the reference)")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    results = [(py, build(py), timed(py, args.runs)) for py in args.python]
    ref = results[0][2]
    print("| interpreter | build | ms | ratio |\n|---|---|---:|---:|")
    for py, what, secs in results:
        print(f"| {py} | {what} | {secs * 1000:.1f} | {secs / ref:.2f} |")


if __name__ == "__main__":
    main()
