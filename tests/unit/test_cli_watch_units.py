"""Pure pieces of the terminal commands: which module defines each command (so `run` loads
only its own), the one-line audit format, and following audit.jsonl across a rotation."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vaultproxy.audit import AuditEvent
from vaultproxy.audit.follow import Follower, matches
from vaultproxy.cli import COMMAND_MODULE, COMMAND_MODULES, build_parser
from vaultproxy.cli.tail import format_record


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_is_mapped_to_the_module_that_defines_it() -> None:
    every = _commands(build_parser())
    assert every == set(COMMAND_MODULE)
    assert set(COMMAND_MODULE.values()) <= set(COMMAND_MODULES)
    for command in every:
        assert command in _commands(build_parser(command)), command


def test_one_line_per_record() -> None:
    rec = AuditEvent(event="request", agent="claude", service="openai", method="POST",
                     host="api.openai.com", path="/v1/chat?key=x", status=200,
                     outcome="injected").to_record()
    line = format_record(rec)
    assert rec["ts"].replace("T", " ").rstrip("Z") in line
    for part in ("claude", "openai", "POST", "api.openai.com/v1/chat", "200", "injected"):
        assert part in line
    assert "key=x" not in line  # the record never had the query
    admin = AuditEvent(event="admin", method="POST", path="/v1/lock", status=200,
                       outcome="ok", reason="lock", caller="unix:uid=0").to_record()
    assert "admin" in format_record(admin) and "unix:uid=0" in format_record(admin)
    refused = AuditEvent(event="request", host="evil.example", method="CONNECT", status=403,
                         outcome="denied", reason="egress_blocked").to_record()
    assert format_record(refused).endswith("403 denied (egress_blocked)")


def test_follower_reads_new_lines_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"n": 0}\n')
    f = Follower(path)  # from the end: the old line is not new
    assert f.records() == []
    with path.open("a") as out:
        out.write('{"n": 1}\n{"n": 2')  # the second line is not complete yet
    assert [r["n"] for r in f.records()] == [1]
    with path.open("a") as out:
        out.write("}\n")
    assert [r["n"] for r in f.records()] == [2]
    with path.open("a") as out:
        out.write('{"n": 3}\n')
    os.replace(path, tmp_path / "audit.jsonl.1")  # rotated: the rest of the old file first
    path.write_text('{"n": 4}\nnot json\n')
    assert [r["n"] for r in f.records()] == [3, 4]
    f.close()


def test_follower_waits_for_a_file_that_is_not_there_yet(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with Follower(path) as f:
        assert f.poll() == []
        path.write_text(json.dumps({"service": "a"}) + "\n")
        assert f.records() == [{"service": "a"}]
    assert matches({"service": "a", "agent": "x"}, "a", None)
    assert not matches({"service": "a", "agent": "x"}, "a", "y")
    assert not matches({"service": "b"}, "a", None)
