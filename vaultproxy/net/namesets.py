"""The sets of header names a peer sent, for readers that make one pattern per known set.

net/h1pool.py reads the upstream's response heads and seam/lean.py the agent's request heads
by one regular expression made for the exact names (same names, same order) of earlier heads.
Both peers are adversaries, so the table that holds those patterns is bounded the same way
for both, here: names only, never a value; a pattern is made the second time a set is seen
(one read alone compiles nothing); a set with more than ``max_names`` names or
``max_name_bytes`` bytes of names is never kept, not even as seen once; at most ``max_sets``
sets are kept (past it the table starts again); and making a pattern costs a few million
instructions (``re``'s compiler runs in Python), so at most ``budget`` are made per
``window`` seconds: a peer that changes its names on every message costs a bounded share of
a core, and its heads are read by the general reader meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["NameSets"]

class NameSets[K]:
    """names -> what ``make`` made of them (None: nothing to make for them), within the
    bounds above. ``table`` and ``made`` are plain objects a test may read or reset."""

    __slots__ = ("budget", "made", "max_name_bytes", "max_names", "max_sets", "table",
                 "window")

    def __init__(self, *, max_sets: int, max_names: int, max_name_bytes: int, budget: int,
                 window: float) -> None:
        self.max_sets, self.max_names, self.max_name_bytes = max_sets, max_names, max_name_bytes
        self.budget, self.window = budget, window
        # names -> the record (None: none to be made; False: seen once so far)
        self.table: dict[tuple[bytes, ...], K | None | bool] = {}
        self.made: list[float] = [0.0, 0]  # the window's start (monotonic), records made in it

    def of(self, names: tuple[bytes, ...], make: Callable[[tuple[bytes, ...]], K | None]
           ) -> K | None:
        """The record for ``names``: None the first time (kept as seen once), made by
        ``make`` the second time if the budget allows (else None, and made on a later
        sight), the same record every time after."""
        table = self.table
        known = table.get(names)
        if known is None and names not in table:
            if len(names) > self.max_names or sum(map(len, names)) > self.max_name_bytes:
                return None  # (never kept)
            if len(table) >= self.max_sets:
                table.clear()
            table[names] = False  # (seen once)
            return None
        if known is False:
            now, made = time.monotonic(), self.made
            if now - made[0] >= self.window:
                made[0], made[1] = now, 0
            if made[1] >= self.budget:
                return None  # (read again later: made when the budget allows)
            made[1] += 1
            known = table[names] = make(names)
        return known  # type: ignore[return-value]
