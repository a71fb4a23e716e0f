"""access/rules.py: path normalisation and first-match rule tables, as tables of facts."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultproxy.access.rules import (
    Rule,
    RuleTable,
    glob_regex,
    normalise_path,
    normalise_target,
    remove_dot_segments,
)


@pytest.mark.parametrize(("raw", "normal"), [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/./b", "/a/b"),
    ("/a/b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),
    ("/../../x", "/x"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2e/b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("/a//b///c", "/a/b/c"),
    ("/%7euser", "/~user"),
    ("/%41%62c", "/Abc"),
    ("/a%2fb", "/a%2Fb"),  # reserved escapes stay, with upper-case hex
    ("/a%20b", "/a%20b"),
    ("/a/%252e%252e/b", "/a/%252e%252e/b"),  # "%25" is not unreserved: stays encoded
    ("*", "*"),
])
def test_normalise_path(raw: str, normal: str) -> None:
    assert normalise_path(raw) == normal


def test_the_query_is_kept_as_sent() -> None:
    assert normalise_target("/a/../b?x=/../y&z=%2e") == "/b?x=/../y&z=%2e"


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e"]), max_size=8))
def test_normalised_paths_have_no_dot_segments_and_are_stable(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    once = normalise_path(path)
    assert once.startswith("/")
    assert normalise_path(once) == once  # idempotent: what upstream gets is a fixed point
    assert "/../" not in once + "/" and "/./" not in once + "/" and "//" not in once


@given(st.lists(st.sampled_from(["a", "b", ".", ".."]), min_size=1, max_size=8))
def test_dot_segment_removal_agrees_with_posixpath(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    mine = remove_dot_segments(path)
    ref = posixpath.normpath(path)
    assert (mine.rstrip("/") or "/") == (ref.rstrip("/") or "/")


def test_glob_star_spans_slashes_and_everything_else_is_literal() -> None:
    rx = re.compile(glob_regex("/repos/*/actions/secrets*"))
    assert rx.fullmatch("/repos/a/b/actions/secrets/x")
    assert not rx.fullmatch("/repos/a/actions/secret")
    assert re.compile(glob_regex("/a.b?c[d]")).fullmatch("/a.b?c[d]")
    assert not re.compile(glob_regex("/a.b")).fullmatch("/axb")


TABLE = RuleTable([
    Rule("GET", "/repos/*", "allow"),
    Rule("*", "/repos/*/actions/secrets*", "deny"),
    Rule("POST", "*", "approve"),
], "allow")


@pytest.mark.parametrize(("method", "path", "action", "rule"), [
    ("GET", "/repos/x", "allow", 0),
    ("get", "/repos/x", "allow", 0),  # methods are case-insensitive
    ("GET", "/repos/x/actions/secrets", "allow", 0),  # first match wins
    ("DELETE", "/repos/x/actions/secrets", "deny", 1),
    ("POST", "/repos/x/actions/secrets", "deny", 1),
    ("POST", "/anything", "approve", 2),
    ("PUT", "/anything", "allow", None),  # the default
    ("PATCH", "/repos/x", "allow", None),
    # an encoded slash or backslash: every reading counts, the strictest wins
    ("DELETE", "/repos/x/actions%2Fsecrets", "deny", 1),
    ("DELETE", "/repos/x/actions\\secrets", "deny", 1),
])
def test_first_match(method: str, path: str, action: str, rule: int | None) -> None:
    v = TABLE.verdict(method, normalise_path(path))
    assert v.action == action
    assert v.rule == (None if rule is None else TABLE.rules[rule])


def test_no_rules_is_the_default() -> None:
    assert RuleTable([], "approve").verdict("GET", "/").action == "approve"
    assert RuleTable([], "approve").verdict("GET", "/").key == "default"


def test_fifty_rules_still_take_the_first_match() -> None:
    rules = [Rule("GET", f"/r{i}/*", "allow") for i in range(49)] + [Rule("*", "*", "deny")]
    table = RuleTable(rules, "allow")
    assert table.verdict("GET", "/r48/x").rule == rules[48]
    assert table.verdict("GET", "/r7/x").rule == rules[7]
    assert table.verdict("POST", "/r7/x").action == "deny"
