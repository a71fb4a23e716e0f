"""access/notify.py: notify_command runs without a shell, the summary last, rate-limited."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vaultproxy.access import notify
from vaultproxy.access.notify import Notifier


def test_runs_directly_with_the_summary_last_and_drops_past_the_burst(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    script = tmp_path / "n.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(repr(sys.argv[2:]) + '\\n')\n")
    now = [0.0]
    n = Notifier(lambda: [sys.executable, str(script), str(out)], clock=lambda: now[0])

    async def go() -> None:
        for i in range(notify.BURST + 3):
            n.notify(f"summary {i}; $(touch {tmp_path}/pwned) `x`")
        await asyncio.gather(*n._tasks)

    asyncio.run(go())
    calls = out.read_text().splitlines()
    assert len(calls) == notify.BURST and n.dropped == 3
    expected = [repr([f"summary {i}; $(touch {tmp_path}/pwned) `x`"])  # one argument each
                for i in range(notify.BURST)]
    assert sorted(calls) == sorted(expected)
    assert not (tmp_path / "pwned").exists()  # never a shell


def test_no_command_no_run() -> None:
    n = Notifier(lambda: None)
    n.notify("x")  # outside a loop and without a command: nothing, no error
    assert n.dropped == 0
