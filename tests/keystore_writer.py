"""Crash-test writer: saves keystore states 1, 2, 3, ... in a loop until it is killed.

State k is a pure function of k (see ``expected``), and every third state also changes the
master password, so a reader can tell exactly which state a file holds. A writer prints
"ready K" after opening, then K after each completed save. Secrets come from the
environment (KS_CANARY, KS_PW0, KS_PW1), never argv.

Run as a small fork server (``keystore_writer.py PATH``), so a trial costs a fork, not an
interpreter start: for each line on stdin it forks a writer, prints "pid N", waits for the
writer to die (the test SIGKILLs it) and prints "dead".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vaultproxy.keystore import KdfParams, Keystore, atomic, store
from vaultproxy.secret import Secret

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


def password(k: int) -> str:
    return os.environ[f"KS_PW{(k // 3) % 2}"]


def expected(k: int) -> dict[str, str]:
    """Entry name -> value for state k (a varying number of entries, so sizes change)."""
    base = os.environ["KS_CANARY"]
    values = {f"e{i}": f"{base}-{k}-{i}" * (1 + k % 3) for i in range(1 + k % 5)}
    values["counter"] = str(k)
    return values


def open_any(path: str) -> Keystore:
    last: Exception | None = None
    for name in ("KS_PW0", "KS_PW1"):
        try:
            return Keystore.open(path, Secret(os.environ[name]))
        except Exception as e:  # wrong password: try the other one
            last = e
    assert last is not None
    raise last


def unsafe_replace(path: Path, data: bytes, expect: bytes | None, **_: object) -> None:
    """The negative control: rewrite in place, as a naive implementation would."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        f.write(data[len(data) // 2 :])


def main(path: str) -> None:
    store.KDF_FLOOR = FAST  # test-only: keep the KDF cheap so many saves fit in a second
    if os.environ.get("KS_UNSAFE") == "1":
        setattr(atomic, "replace", unsafe_replace)  # noqa: B010 - patching a module
    ks = open_any(path)
    counter = ks.get("counter")
    assert counter is not None and counter.value is not None
    k = int(counter.value.reveal_str())
    sys.stdout.write(f"ready {k}\n")
    sys.stdout.flush()
    while True:
        k += 1
        for name in ks.names():
            ks.remove(name)
        for name, value in expected(k).items():
            ks.set_value(name, Secret(value))
        if k % 3 == 0:
            ks.change_password(Secret(password(k)))
        else:
            ks.save()
        sys.stdout.write(f"{k}\n")
        sys.stdout.flush()


def serve(path: str) -> None:
    for _ in sys.stdin:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                main(path)
            finally:
                os._exit(1)
        sys.stdout.write(f"pid {pid}\n")
        sys.stdout.flush()
        os.waitpid(pid, 0)
        sys.stdout.write("dead\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(sys.argv[1])
