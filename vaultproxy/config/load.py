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
from vaultproxy.config.problems import FILE, Across, render
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


def parse_toml(text: str) -> tomlkit.TOMLDocument:
    """Parse TOML text; syntax errors become ``services.toml: line N: reason``."""
    try:
        return tomlkit.parse(text)
    except tkx.ParseError as e:
        raise ConfigError([f"{FILE}: line {e.line}: {_parse_reason(e)}"]) from None
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
        problems = render(e, order=list(Config.model_fields), key_order=SPEC_ORDER)
        if not any(isinstance((i.get("ctx") or {}).get("error"), Across) for i in e.errors()):
            # A table failed, so the model's cross-service rule did not run: run it over
            # what is valid on its own, so one `check` still lists every problem.
            problems += [f"{path}: {msg}" for path, msg in across(data.get("service"))]
        raise ConfigError(problems) from None


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
