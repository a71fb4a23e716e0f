"""How the kernel spreads connections over SO_REUSEPORT listeners (issue 15).

    python3 bench/spread.py            # 50 connections over 2 listeners, 20 rounds

Two listeners on one port with SO_REUSEPORT (as ``vaultproxy run --workers 2``), N plain
connections per round, then each listener's ``accept()`` count. No proxy involved: this is
the kernel's 4-tuple hash alone.
"""

from __future__ import annotations

import argparse
import socket
import time


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    s.setblocking(False)
    return s


def accepted(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            c, _ = s.accept()
        except BlockingIOError:
            return n
        c.close()
        n += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    a = listener()
    b = listener(a.getsockname()[1])
    splits = []
    for _ in range(args.rounds):
        conns = [socket.create_connection(a.getsockname()) for _ in range(args.conns)]
        time.sleep(0.05)
        splits.append((accepted(a), accepted(b)))
        for c in conns:
            c.close()
    print(f"{args.conns} connections over 2 SO_REUSEPORT listeners, per round:", splits)
    print("most uneven:", max(splits, key=lambda t: abs(t[0] - t[1])))


if __name__ == "__main__":
    main()
