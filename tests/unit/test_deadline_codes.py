"""What the seam's deadlines and the supervisor's heartbeat rely on: a timed-out upstream is
classified ``504 upstream_timeout`` (nothing else is), and a stopped process is told from a
running one through /proc."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from vaultproxy.engine.workers import proc_stopped
from vaultproxy.seam.deadlines import TIMEOUT_MESSAGE
from vaultproxy.seam.engine_errors import classify_engine_error


def test_a_timed_out_upstream_is_504_and_other_errors_are_not() -> None:
    assert classify_engine_error(502, TIMEOUT_MESSAGE)[:2] == (504, "upstream_timeout")
    assert classify_engine_error(502, f"[Errno 110] {TIMEOUT_MESSAGE} (connect)")[1] == \
        "upstream_timeout"
    assert classify_engine_error(502, "server closed connection")[1] == "upstream_protocol"
    assert classify_engine_error(502, "[Errno 111] Connect call failed")[1] == \
        "upstream_unreachable"


def test_proc_stopped_tells_a_stopped_process_from_a_running_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not proc_stopped(child.pid)  # twin: running (sleeping)
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not proc_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc_stopped(child.pid)
        child.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 5
        while proc_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not proc_stopped(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not proc_stopped(child.pid)  # gone
