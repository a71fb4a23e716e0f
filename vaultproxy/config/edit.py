"""Comment-preserving edits of services.toml through the tomlkit document.

Every edit: parse the current file, change the document, validate the result with the
same rules as load_config, then write a 0600 temp file next to it and ``os.replace`` it.
A rejected edit raises ConfigError and leaves the file untouched. Never regenerate TOML
from ``model_dump()``: that would drop the operator's comments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Comment, Table, Whitespace

from vaultproxy.config.load import build, parse_toml, read_text, to_plain
from vaultproxy.config.models import Config
from vaultproxy.errors import ConfigError
from vaultproxy.files.atomic_file import write_atomic


def _services_aot(doc: tomlkit.TOMLDocument) -> AoT | None:
    aot = doc.get("service")
    if aot is None:
        return None
    if not isinstance(aot, AoT):
        raise ConfigError(["service: must be an array of tables ([[service]])"])
    return aot


def _commit(path: Path, doc: tomlkit.TOMLDocument) -> Config:
    """Validate ``doc`` and atomically replace ``path`` with it; return the new config."""
    text = tomlkit.dumps(doc)
    cfg = build(to_plain(parse_toml(text)), path.parent)
    write_atomic(path, text)
    return cfg


def _load_doc(path: Path) -> tomlkit.TOMLDocument:
    return parse_toml(read_text(path)) if path.exists() else tomlkit.document()


def add_service(path: Path, table: Mapping[str, object]) -> Config:
    """Append a ``[[service]]`` table (plain values) to services.toml, if the result is valid."""
    doc = _load_doc(path)
    aot = _services_aot(doc)
    new = tomlkit.table()
    for key, value in table.items():
        new[key] = list(value) if isinstance(value, tuple) else value
    if aot is None:
        doc.append("service", tomlkit.aot())
        aot = _services_aot(doc)
        assert aot is not None
    aot.append(new)
    return _commit(path, doc)


def _index_of(aot: AoT | None, name: str) -> int:
    for i, t in enumerate(aot.body if aot is not None else []):
        if t.get("name") == name:
            return i
    raise ConfigError([f'service: no service named "{name}"'])


def remove_service(path: Path, name: str) -> Config:
    """Remove the service called ``name``; comments elsewhere in the file survive."""
    doc = _load_doc(path)
    aot = _services_aot(doc)
    i = _index_of(aot, name)
    assert aot is not None
    _keep_trailing_comments(doc, aot, i)
    del aot[i]
    if not aot.body:
        del doc["service"]
    return _commit(path, doc)


def _keep_trailing_comments(doc: tomlkit.TOMLDocument, aot: AoT, i: int) -> None:
    """tomlkit stores the comments above table i+1 at the end of table i: move them to the
    table before it so they survive the removal. (With no table before it they are lost.)"""
    body = aot.body[i].value.body
    n = len(body)
    while n and body[n - 1][0] is None and isinstance(body[n - 1][1], Comment | Whitespace):
        n -= 1
    trailing = [item for _, item in body[n:]]
    if not any(isinstance(item, Comment) for item in trailing):
        return
    prev: Table | None = aot.body[i - 1] if i > 0 else None
    if prev is None:
        at = next((j for j, (k, _) in enumerate(doc.body) if k is not None
                   and k.key == "service"), 0)
        before = doc.body[at - 1][1] if at > 0 else None
        prev = before if isinstance(before, Table) else None
    if prev is None:
        return
    for item in trailing:
        prev.value.append(None, item)


def set_service_key(path: Path, name: str, key: str, value: object) -> Config:
    """Set (or with ``value=None`` remove) one key of one service."""
    doc = _load_doc(path)
    aot = _services_aot(doc)
    table: Table = aot.body[_index_of(aot, name)]  # type: ignore[union-attr]
    if value is None:
        if key in table:
            del table[key]
    else:
        table[key] = list(value) if isinstance(value, tuple) else value
    return _commit(path, doc)


def set_proxy_key(path: Path, key: str, value: object) -> Config:
    """Set (or with ``value=None`` remove) one key of the ``[proxy]`` table."""
    return set_table_key(path, "proxy", key, value)


def set_table_key(path: Path, name: str, key: str, value: object) -> Config:
    """Set (or with ``value=None`` remove) one key of a top-level table (``[proxy]``,
    ``[agent]``), creating the table when needed."""
    doc = _load_doc(path)
    proxy = doc.get(name)
    if proxy is None:
        if value is None:
            return _commit(path, doc)
        proxy = tomlkit.table()
        doc.add(name, proxy)
        proxy = doc[name]
    if not isinstance(proxy, Table):
        raise ConfigError([f"{name}: must be a table ([{name}])"])
    if value is None:
        if key in proxy:
            del proxy[key]
    else:
        proxy[key] = list(value) if isinstance(value, tuple) else value
    return _commit(path, doc)
