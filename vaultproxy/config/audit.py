"""``[audit]`` in services.toml: what happens when ``audit.jsonl`` cannot be
written (disk full, read-only file system, quota).

```toml
[audit]
on_failure = "deny"       # default: a request that would carry a credential is refused
                          # (503 audit_unavailable) rather than forwarded unaudited
# on_failure = "continue" # keep injecting unaudited (a SECURITY line at every start)
```
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import field_validator

from vaultproxy.config.fields import Model, choice

OnFailure = Literal["deny", "continue"]


class AuditSettings(Model):
    """``[audit]``: the audit trail's failure policy (audit/log.py applies it)."""

    on_failure: OnFailure = "deny"

    @field_validator("on_failure", mode="before")
    @classmethod
    def _on_failure(cls, value: object) -> object:
        return choice(value, get_args(OnFailure))
