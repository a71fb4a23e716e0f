"""Raw query-string edits that leave every other parameter byte-identical."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from vaultproxy.values.placeholders import holds


def param_name(pair: bytes) -> bytes:
    """The decoded name of one ``name=value`` pair (``+`` is a space, as in forms)."""
    raw = pair.partition(b"=")[0]
    return unquote_to_bytes(raw.replace(b"+", b" "))


def drop_params(query: bytes, name: str, keep: Callable[[bytes], bool]) -> bytes:
    """Remove pairs whose decoded name is ``name``, unless ``keep(pair)`` says otherwise.

    The name is compared after percent-decoding, so ``k%65y=`` cannot smuggle a ``key=``.
    Both ``&`` and ``;`` separate pairs for this test (some servers honour ``;``).
    """
    if not query:
        return query
    target = name.encode("utf-8")
    out = []
    for pair in query.split(b"&"):
        names = {param_name(part) for part in pair.split(b";")}
        if target in names and not keep(pair):
            continue
        out.append(pair)
    return b"&".join(out)


def map_param_values(query: bytes, name: str, fn: Callable[[bytes], bytes]) -> bytes:
    """Apply ``fn`` to the value of each ``name=value`` pair whose decoded name is ``name``.

    A pair holding a ``;`` is left alone (servers disagree on whether it separates pairs),
    as is every other pair, byte for byte.
    """
    if not query:
        return query
    target = name.encode("utf-8")
    out = []
    for pair in query.split(b"&"):
        if not holds(pair, b";") and holds(pair, b"=") and param_name(pair) == target:
            raw_name, _, value = pair.partition(b"=")
            pair = raw_name + b"=" + fn(value)
        out.append(pair)
    return b"&".join(out)
