"""``[[mcp_server]]`` (SPEC §11): MCP servers that `vaultproxy mcp config` launches under
`vaultproxy exec`. ``env`` values are what the server sees: placeholders such as
``"__vault.github__"`` (never a real secret: this file holds none, and the proxy swaps the
placeholder for the credential on the way out)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import field_validator

from vaultproxy.config import rules
from vaultproxy.config.fields import Model, rule, ruled
from vaultproxy.config.problems import Problems, TypeProblem

PLACEHOLDER_RE = re.compile(r"__vault\.[a-z0-9][a-z0-9_-]{0,63}__")


class McpServer(Model):
    name: Annotated[str, ruled(rules.check_name)]
    command: tuple[str, ...]
    env: dict[str, str] = {}
    isolate: bool = True

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: object) -> object:
        if (isinstance(value, Sequence) and not isinstance(value, str | bytes) and value
                and all(isinstance(v, str) and v and "\x00" not in v for v in value)):
            return tuple(value)
        raise TypeProblem.one('must be a non-empty list of strings, e.g. ["uvx", "server"]')

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            rule(rules.check_env, name)
        return value


def mcp_servers(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(m, Mapping | McpServer) for m in value
    ):
        names = [m.get("name") if isinstance(m, Mapping) else m.name for m in value]
        dup = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if dup:
            raise Problems.one(f"mcp_server name {dup[0]!r} is used twice")
        return tuple(value)
    raise TypeProblem.one("must be an array of tables ([[mcp_server]])")


def placeholder_problems(servers: Sequence[McpServer],
                         known: set[str]) -> list[tuple[str, str]]:
    """An env value naming a ``__vault.x__`` placeholder that is none of ``known`` (the
    services' placeholders and the honeytokens'): a typo would reach the server as a literal
    the proxy then refuses (403 placeholder_unknown), so it is refused here, at load."""
    return [(f"mcp_server[{i}].env.{var}", "names a placeholder of no service")
            for i, m in enumerate(servers) for var, val in m.env.items()
            if any(tok not in known for tok in PLACEHOLDER_RE.findall(val))]
