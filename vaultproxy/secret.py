"""A secret value as a type: redacted repr/str, explicit reveal, best-effort wipe."""

from __future__ import annotations

import hmac


class Secret:
    """Holds secret bytes. ``repr``/``str`` never show them; ``reveal()`` does.

    Python cannot truly zeroize memory; we keep the value in a ``bytearray`` and
    overwrite it in ``wipe()`` so at least our own copy does not linger.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        self._value = bytearray(value)

    def reveal(self) -> bytes:
        return bytes(self._value)

    def reveal_str(self) -> str:
        return self._value.decode("utf-8")

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(bytes(self._value), bytes(other._value))

    def __hash__(self) -> int:  # pragma: no cover - secrets are not dict keys
        raise TypeError("Secret is not hashable")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret cannot be pickled")

    def wipe(self) -> None:
        for i in range(len(self._value)):
            self._value[i] = 0
        self._value = bytearray()
