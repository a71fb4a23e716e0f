"""An option's value read without ``copy.deepcopy`` where the copy is the value itself (a
speed patch of the seam).

Every ``ctx.options.<name>`` goes through mitmproxy's ``_Option.current``, which returns
``copy.deepcopy`` of the value -- for an option never set, of ``copy.deepcopy`` of its
default (the ``default`` property): four Python calls and two dispatches through ``copy``
per read. A new agent connection reads ~32 options (its layers' ``__init__``, NextLayer,
TlsConfig, the pool's ``_LazyDial``): ~170 of its ~2,500 Python calls.

``deepcopy`` of a ``None``, ``bool``, ``int``, ``float``, ``str`` or ``bytes`` (the exact
types; ``copy``'s atomic ones) is that object itself, so for those ``current`` here returns
the value (or, unset, the default) as it is; any other value (a list, a tuple, a subclass,
anything with ``__deepcopy__``) takes mitmproxy's ``current``, so the caller still gets its
own copy. mitmproxy's ``current`` and ``default`` are fingerprinted (``need.unchanged``): one
that differs keeps mitmproxy's, with one WARNING. ``VAULTPROXY_FAST_OPTIONS=0`` keeps it too
(A/B). tests/unit/test_speed_options.py compares both on seeded values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import optmanager

from vaultproxy.seam import need
from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)

ENV = "VAULTPROXY_FAST_OPTIONS"
#: ``need.fingerprint`` (source) and ``need.code_fingerprint`` of mitmproxy 12.3's
#: ``_Option.current`` and of its ``default`` property's getter
FINGERPRINTS = {
    "current": ("6859c2d9c826806e", "e8f8b71cc077ced3"),
    "default": ("cfc9882b8960757d", "d79393e4c6a53f12"),
}
#: the exact types whose ``copy.deepcopy`` is the object itself
ATOMIC = frozenset({type(None), bool, int, float, str, bytes})

STOCK: dict[str, Callable[..., Any]] = {}
_installed = False


def missing_symbol() -> str | None:
    return (missing(optmanager, "_Option", "unset")
            or missing(optmanager._Option, "current", "default", "value", "_default"))


def _make(stock: Callable[[Any], Any]) -> Callable[[Any], Any]:
    unset, atomic = optmanager.unset, ATOMIC

    def current(self: Any) -> Any:
        """mitmproxy's ``_Option.current``: the value's (or default's) deep copy, which for
        an atomic type is the object itself."""
        v = self.value
        if v is unset:
            v = self._default
        if type(v) in atomic:
            return v
        return stock(self)

    return current


def install() -> bool:
    """Replace ``_Option.current`` if mitmproxy's is the one this was written against."""
    global _installed
    if _installed:
        return True
    if not need.may_install(ENV, missing_symbol, logger, "option reads stay mitmproxy's"):
        return False
    cls: Any = optmanager._Option
    current, default = cls.current, cls.default.fget
    if not (need.unchanged(current, *FINGERPRINTS["current"])
            and need.unchanged(default, *FINGERPRINTS["default"])):
        logger.warning("mitmproxy's _Option.current is not the one vaultproxy's fast option "
                       "read was written against: it stays mitmproxy's (slower)")
        return False
    STOCK["current"] = current
    cls.current = _make(current)
    _installed = True
    return True


def installed() -> bool:
    return _installed
