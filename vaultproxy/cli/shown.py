"""Agent-chosen text on the operator's terminal (paths, approval reasons, audit lines):
every non-printable character escaped, so a control sequence an agent put in a request
cannot rewrite what the operator reads (``approvals --watch`` asks for a decision right
under it) or set the window title."""

from __future__ import annotations


def shown(value: object) -> str:
    """``value``'s text with every non-printable character as its Python escape
    (``\\x1b``, ``\\x07``, ``\\u202e``)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
