"""How services.toml problems are raised inside the pydantic models and rendered as
``path: message`` lines (SPEC §3 `check`).

A validator raises :class:`Problems` to report one or more problems below the field it
validates (``hosts[1]``, ``substitute_in[0]``) or :class:`TypeProblem` for a value of the
wrong shape. :func:`render` turns a ``ValidationError`` into lines in file order: per table,
unknown keys first, then wrong types, then missing keys, then broken rules. No message ever
contains the offending value (the models set ``hide_input_in_errors``).
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

FILE = "services.toml"


class Problems(ValueError):
    """Problems found by one validator: ``(subpath, message)`` pairs, subpath relative to the
    validated field ("" for the field itself, "[2]" for its third item)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self.items = list(items)
        super().__init__("; ".join(f"{sub}: {msg}" if sub else msg for sub, msg in self.items))

    @classmethod
    def one(cls, message: str, sub: str = "") -> Problems:
        return cls([(sub, message)])


class TypeProblem(Problems):
    """The value has the wrong shape (reported with the type errors, before rule errors)."""


class Across(Problems):
    """Rules that span services; subpaths are absolute (``service[1].name``)."""


# pydantic error types -> our wording (the rest come from our own validators)
_TYPE_MESSAGES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}
_UNKNOWN, _TYPE, _MISSING, _RULE = range(4)


def _join(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _container(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """The table a problem belongs to: () top level, ("proxy",), ("service", 2)."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        return tuple(loc[:2])
    return tuple(loc[:1]) if len(loc) > 1 else ()


def _models_in(tp: object) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (through list, tuple, Optional, Union,
    Annotated)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        out += _models_in(arg)
    return out


def keys_at(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the table holding ``loc``'s last part accepts (for "did you mean")."""
    models = [root]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        inner = [m for model in models if (f := model.model_fields.get(str(part)))
                 for m in _models_in(f.annotation)]
        if inner or any(str(part) in m.model_fields for m in models):
            models = inner
        # else: a union's tag in the path (pydantic adds it); the candidates stay
    return sorted({f.alias or name for m in models for name, f in m.model_fields.items()})


def did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)  # "egres" is not "rules"
    return f'; did you mean "{close[0]}"?' if close else ""


def render(err: ValidationError, order: Sequence[str] = (),
           key_order: Sequence[str] = (), root: type[BaseModel] | None = None) -> list[str]:
    """Every problem as ``path: message``. ``order``: the top-level keys in report order;
    ``key_order``: keys whose missing-key problems come in this order (the SPEC's);
    ``root``: the model, to suggest the closest known key for an unknown one."""
    rows: list[tuple[tuple[int, int], int, int, str]] = []
    for n, item in enumerate(err.errors(include_url=False, include_input=False)):
        loc = item["loc"]
        kind = item["type"]
        error = (item.get("ctx") or {}).get("error")
        path = _join(loc)
        if isinstance(error, Problems):
            category = _TYPE if isinstance(error, TypeProblem) else _RULE
            for sub, msg in error.items:
                if isinstance(error, Across):  # after every table's own problems, as before
                    rows.append(((len(order) + 1, 0), category, n, f"{sub}: {msg}"))
                else:
                    full = (path + sub) if path else sub.lstrip(".")
                    rows.append((_rank(_container(loc), order), category, n,
                                 f"{full or FILE}: {msg}"))
            continue
        if kind == "extra_forbidden":
            category, msg = _UNKNOWN, "unknown key"
            if root is not None and loc:
                msg += did_you_mean(str(loc[-1]), keys_at(root, loc))
        elif kind == "missing":
            category, msg = _MISSING, "is required"
            if loc and loc[-1] in key_order:
                n = -len(key_order) + key_order.index(str(loc[-1]))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            category, msg = _TYPE, f"must be a table ([{loc[-1]}])" if loc else "must be a table"
        elif kind in _TYPE_MESSAGES:
            category, msg = _TYPE, _TYPE_MESSAGES[kind]
        else:  # a plain ValueError from a validator, or a constraint we did not word
            category, msg = _RULE, item["msg"].removeprefix("Value error, ")
        rows.append((_rank(_container(loc), order), category, n, f"{path or FILE}: {msg}"))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return _dedupe(r[3] for r in rows)


def _rank(where: tuple[int | str, ...], order: Sequence[str]) -> tuple[int, int]:
    if not where:
        return (-1, 0)
    key = str(where[0])
    top = order.index(key) if key in order else len(order)
    return (top, int(where[1]) if len(where) > 1 and isinstance(where[1], int) else 0)


def _dedupe(lines: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


_TABLE = re.compile(r"^(service|source)\[(\d+)\]")


def with_names(lines: Iterable[str], data: Mapping[str, object]) -> list[str]:
    """``service[0].x: ...`` -> ``service "openai" (service[0]).x: ...``: the name the
    operator knows the table by, and its index (two tables may share a name)."""
    out = []
    for line in lines:
        m = _TABLE.match(line)
        name = _name_of(data.get(m.group(1)), int(m.group(2))) if m else None
        if m and name is not None:
            line = f'{m.group(1)} "{name}" ({m.group(0)})' + line[m.end():]
        out.append(line)
    return out


def _name_of(tables: object, index: int) -> str | None:
    if not isinstance(tables, list) or not 0 <= index < len(tables):
        return None
    table = tables[index]
    name = table.get("name") if isinstance(table, dict) else None
    # Only a valid name is shown (an invalid one is the problem reported, never echoed).
    if isinstance(name, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        return name
    return None
