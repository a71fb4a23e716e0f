"""A header section's names as the stages compare them, computed once per section.

``Headers.fields`` is a tuple that every change replaces whole, so a view kept beside the
very tuple it was computed from (held here, so ``is`` cannot meet a new tuple at a recycled
address) is never stale: a stage that edits the headers makes a new tuple, and the next
asker computes its view. The stages of one request ask one after another, on the same
tuple unless one of them changed it."""

from __future__ import annotations

Fields = tuple[tuple[bytes, bytes], ...]

_names_memo: tuple[object, tuple[bytes, ...]] = ((), ())
_canonical_memo: tuple[object, tuple[bytes, ...]] = ((), ())
# A fields tuple seam/lean.py ``LeanLayer._take`` read by the pattern of its names
# (``_Known``) and what ``core/pipeline.py`` ``check_headers`` returns for it (its
# ``header_names``): the pattern proved every check it makes of those very fields. Set only
# there; names only, never a value (the tuple is held as the other memos hold theirs).
_checked_memo: tuple[object, tuple[bytes, ...]] = ((), ())


def header_names(fields: Fields) -> tuple[bytes, ...]:
    """Each field's name as ``Headers`` compares names (bytes, ASCII lower-cased), in order:
    ``name in header_names(...)`` is ``name in headers`` without a lookup's scan."""
    global _names_memo
    memo = _names_memo
    if memo[0] is fields:
        return memo[1]
    names = tuple([k.lower() for k, _ in fields])
    if type(fields) is tuple:
        _names_memo = (fields, names)
    return names


def canonical_names(fields: Fields, names: tuple[bytes, ...] | None = None
                    ) -> tuple[bytes, ...]:
    """Each field's name as an upstream may read it (``inject.request.canonical_name``:
    lower-cased, ``_`` read as ``-``), in order. Without a ``_`` in any name these are the
    ``header_names`` themselves. ``names``: ``header_names(fields)``, if the caller has it."""
    global _canonical_memo
    memo = _canonical_memo
    if memo[0] is fields:
        return memo[1]
    if names is None:
        names = header_names(fields)
    if b"".join(names).find(b"_") != -1:
        names = tuple([n.replace(b"_", b"-") for n in names])
    if type(fields) is tuple:
        _canonical_memo = (fields, names)
    return names


def names_with(fields: Fields, more: Fields, name: bytes) -> tuple[bytes, ...] | None:
    """``more`` is ``fields`` plus one field named ``name`` (lower-cased): when the memo
    holds ``header_names(fields)``, it holds ``more``'s from now on, that plus ``name`` (the
    same tuple ``header_names(more)`` would compute: the injected request's next asker), and
    that tuple is returned; None (the memo unchanged) otherwise."""
    global _names_memo
    memo = _names_memo
    if memo[0] is fields and type(more) is tuple:
        names = memo[1] + (name,)
        _names_memo = (more, names)
        return names
    return None
