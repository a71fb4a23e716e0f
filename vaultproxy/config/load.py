"""Load services.toml: tomlkit -> plain data -> the pydantic models (the one schema).

Any problem raises :class:`ConfigError` whose ``problems`` are ``path: message`` lines
naming the field and the rule, never the value (a value might be a pasted secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tomlkit
from pydantic import ValidationError
from tomlkit import exceptions as tkx

from vaultproxy.config.models import Config, across
from vaultproxy.config.problems import FILE, Across, render, with_names
from vaultproxy.errors import ConfigError

SPEC_ORDER = ("name", "hosts", "mode", "auth")  # how SPEC §4 lists a service's keys

# tomlkit messages can quote the offending character or key; ours never do.
_PARSE_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (tkx.MixedArrayTypesError, "an array mixes value types"),
    (tkx.InvalidNumberError, "invalid number"),
    (tkx.InvalidDateTimeError, "invalid date-time"),
    (tkx.InvalidDateError, "invalid date"),
    (tkx.InvalidTimeError, "invalid time"),
    (tkx.InvalidNumberOrDateError, "invalid number or date"),
    (tkx.InvalidUnicodeValueError, "invalid unicode escape"),
    (tkx.UnexpectedCharError, "unexpected character"),
    (tkx.EmptyKeyError, "empty key"),
    (tkx.EmptyTableNameError, "empty table name"),
    (tkx.InvalidCharInStringError, "invalid character in a string"),
    (tkx.UnexpectedEofError, "unexpected end of file (an unclosed string, array or table?)"),
    (tkx.InvalidControlChar, "control character not allowed here"),
)


def _parse_reason(err: tkx.ParseError) -> str:
    for kind, reason in _PARSE_REASONS:
        if isinstance(err, kind):
            return reason
    if "already exists" in str(err):
        return "a key or table is defined twice"
    return "invalid TOML syntax"


def _open_quote(line: str) -> int | None:
    """Index of a quote that opens a string this line never closes, or None."""
    quote, start, i = "", -1, 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch == "#":
            break
        elif ch in "\"'":
            quote, start = ch, i
        i += 1
    return start if quote else None


def _located(err: tkx.ParseError, text: str) -> str:
    """``line N, column C: reason (hint)``: positions and shapes only, never the text."""
    line_no, col = err.line, err.col + 1
    lines = text.splitlines()
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    reason, hint = _parse_reason(err), ""
    unclosed = isinstance(err, tkx.InvalidControlChar | tkx.UnexpectedEofError)
    opened = _open_quote(line) if unclosed else None
    if opened is not None:
        col = opened + 1
        reason = "a string starts here and is not closed on this line"
        hint = ('add the closing quote; a string ends on the line it starts ("""..."""'
                " spans lines)")
    elif isinstance(err, tkx.UnexpectedCharError) and "=" in line \
            and line.split("=", 1)[1].strip()[:1].isalpha():
        hint = 'a string value needs quotes: key = "..."'
    elif isinstance(err, tkx.UnexpectedCharError) and line[: err.col].rstrip().endswith("="):
        hint = "a value is missing after `=`"
    elif isinstance(err, tkx.UnexpectedCharError) and line.lstrip().startswith("[") \
            and "]" not in line:
        hint = "a table header needs its closing `]`"
    elif reason == "a key or table is defined twice":
        hint = "remove or rename one of them; each service is its own [[service]] table"
    return f"line {line_no}, column {col}: {reason}" + (f"; {hint}" if hint else "")


def parse_toml(text: str) -> tomlkit.TOMLDocument:
    """Parse TOML text; syntax errors become ``services.toml: line N, column C: reason``
    with a hint where the shape of the line suggests one."""
    try:
        return tomlkit.parse(text)
    except tkx.ParseError as e:
        raise ConfigError([f"{FILE}: {_located(e, text)}"]) from None
    except tkx.TOMLKitError:
        raise ConfigError([f"{FILE}: invalid TOML"]) from None


def to_plain(doc: tomlkit.TOMLDocument) -> dict[str, object]:
    """The document as plain dict/list/str/int/bool values (tomlkit wrappers removed)."""
    try:
        data = doc.unwrap()
    except tkx.TOMLKitError:
        raise ConfigError([f"{FILE}: a key or table is defined twice"]) from None
    assert isinstance(data, dict)
    return data


def build(data: Mapping[str, object], base_dir: Path | None) -> Config:
    """Validate plain data into the model; every problem in one ConfigError.

    ``base_dir`` (the home) anchors ``ca_cert`` files; None skips the file checks."""
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        problems = render(e, order=list(Config.model_fields), key_order=SPEC_ORDER,
                          root=Config)
        if not any(isinstance((i.get("ctx") or {}).get("error"), Across) for i in e.errors()):
            # A table failed, so the model's cross-service rule did not run: run it over
            # what is valid on its own, so one `check` still lists every problem.
            problems += [f"{path}: {msg}" for path, msg in across(data.get("service"))]
        raise ConfigError(with_names(problems, data)) from None


def parse_config(text: str, base_dir: Path) -> Config:
    """Parse services.toml text; ``base_dir`` (the home) anchors relative ``ca_cert`` paths."""
    return build(to_plain(parse_toml(text)), base_dir)


def read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{FILE}: not found; run `vaultproxy init` to create one"]) from None
    except OSError as e:
        raise ConfigError([f"{FILE}: cannot be read ({e.strerror})"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{FILE}: not valid UTF-8"]) from None


def load_config(path: Path) -> Config:
    """Load and validate the services.toml at ``path`` (ca_cert is relative to its folder)."""
    return parse_config(read_text(path), path.parent)
