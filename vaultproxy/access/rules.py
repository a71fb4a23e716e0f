"""Request rules: which method and path a service's agents may use (SPEC §10). Pure.

The path is matched in its *normalised* form, which is also the form sent upstream, so what
the rule saw is what the upstream serves:

* unreserved percent-escapes (``A-Z a-z 0-9 - . _ ~``) are decoded (``%2e`` -> ``.``,
  ``%41`` -> ``A``); the remaining escapes get upper-case hex;
* runs of ``/`` collapse to one (``//`` is a common way past prefix rules: many servers
  merge slashes);
* dot-segments are removed (RFC 3986 §5.2.4), after the decoding, so ``/a/%2e%2e/b`` is
  ``/b``.

Servers disagree about a few more spellings (``%2F`` and ``\\`` as ``/``; ``%5C``). Those
are not rewritten (an upstream may rely on ``%2F`` staying encoded) but every reading counts:
the path is also matched with them read as ``/`` and the strictest verdict wins
(deny > approve > allow), so an encoded slash can only make a request stricter.

A rule's ``path`` is a glob in which ``*`` matches any run of characters, ``/`` included;
every other character is literal. ``method`` is one method (case-insensitive) or ``*``. The
first rule that matches decides; none: the service's ``default_action``. The query string is
never matched.

For speed each table compiles, per method named in it, one regular expression that is the
ordered alternation of the rules that apply to that method (``fullmatch`` takes the first
alternative that matches as a whole): one regex call per request, however many rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Action = Literal["allow", "approve", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "approve", "deny")
_STRICTNESS = {"allow": 0, "approve": 1, "deny": 2}

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
_ALT_SLASH = re.compile(r"%2[fF]|%5[cC]|\\")


def _unescape_unreserved(m: re.Match[str]) -> str:
    value = int(m.group(1), 16)
    return chr(value) if value in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path (one that starts with ``/``)."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return "/" + "/".join(out)


def normalise_path(path: str) -> str:
    """The normalised form of an origin-form path (no query); see the module docstring."""
    if not path.startswith("/"):
        return path  # "*" (OPTIONS) and the like: nothing to normalise
    if "%" in path:
        path = _ESCAPE.sub(_unescape_unreserved, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path


def normalise_target(target: str) -> str:
    """``path?query`` with the path normalised and the query kept as it is."""
    path, sep, query = target.partition("?")
    return normalise_path(path) + sep + query


def glob_regex(pattern: str) -> str:
    """The regex source of a rule path glob (``*`` = any characters, ``/`` included)."""
    return ".*".join(re.escape(part) for part in pattern.split("*"))


@dataclass(frozen=True)
class Rule:
    method: str  # upper case, or "*"
    path: str
    action: Action

    @property
    def key(self) -> str:
        """What a grant is bound to: the rule's text (stable across reloads that keep it)."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: Rule | None  # None: no rule matched, the default action

    @property
    def key(self) -> str:
        return self.rule.key if self.rule is not None else "default"


class RuleTable:
    """One service's rules, compiled once per registry (see the module docstring)."""

    __slots__ = ("_by_method", "_default", "_rules", "_wild")

    def __init__(self, rules: Iterable[Rule], default: Action = "allow") -> None:
        self._rules = tuple(rules)
        self._default = Verdict(default, None)
        methods = {r.method for r in self._rules if r.method != "*"}
        self._by_method = {m: self._compile(m) for m in methods}
        self._wild = self._compile(None)  # for methods no rule names

    def _compile(self, method: str | None) -> tuple[re.Pattern[str] | None, tuple[int, ...]]:
        picked = [i for i, r in enumerate(self._rules) if r.method in ("*", method)]
        if not picked:
            return None, ()
        source = "|".join(f"({glob_regex(self._rules[i].path)})" for i in picked)
        return re.compile(source, re.DOTALL), tuple(picked)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def _match(self, method: str, path: str) -> Verdict:
        regex, picked = self._by_method.get(method, self._wild)
        if regex is None:
            return self._default
        m = regex.fullmatch(path)
        if m is None or m.lastindex is None:
            return self._default
        rule = self._rules[picked[m.lastindex - 1]]
        return Verdict(rule.action, rule)

    def verdict(self, method: str, normalised: str) -> Verdict:
        """The verdict for ``method`` on a path already normalised (``normalise_path``)."""
        method = method.upper()
        if not self._rules:
            return self._default
        found = self._match(method, normalised)
        if _ALT_SLASH.search(normalised):  # other readings of the same path
            alt = normalise_path(_ALT_SLASH.sub("/", normalised))
            other = self._match(method, alt)
            if _STRICTNESS[other.action] > _STRICTNESS[found.action]:
                return other
        return found


def stricter(a: Action, b: Action) -> Action:
    return a if _STRICTNESS[a] >= _STRICTNESS[b] else b
