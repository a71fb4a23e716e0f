"""Is a secret value weak? Pure rules over its characters; reasons are fixed codes.

- ``short``: fewer than MIN_LENGTH characters;
- ``few_classes``: fewer than 3 of the classes lower/upper/digit/symbol while shorter than
  LONG (a long random token, e.g. 40 hex digits, is fine with two classes);
- ``repetitive``: fewer than MIN_DISTINCT distinct characters.
"""

from __future__ import annotations

MIN_LENGTH = 12
LONG = 20
MIN_CLASSES = 3
MIN_DISTINCT = 6


def _classes(text: str) -> int:
    kinds = set()
    for ch in text:
        if ch.islower():
            kinds.add("lower")
        elif ch.isupper():
            kinds.add("upper")
        elif ch.isdigit():
            kinds.add("digit")
        else:
            kinds.add("symbol")
    return len(kinds)


def weak_reasons(value: bytes) -> list[str]:
    """The reasons ``value`` is weak ([] when it is not); never mentions the value."""
    text = value.decode("utf-8", "replace")
    reasons = []
    if len(text) < MIN_LENGTH:
        reasons.append("short")
    if len(text) < LONG and _classes(text) < MIN_CLASSES:
        reasons.append("few_classes")
    if len(set(text)) < MIN_DISTINCT:
        reasons.append("repetitive")
    return reasons
