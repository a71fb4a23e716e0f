"""``[mtls]`` in services.toml: the mutual-TLS listener (`vaultproxy run --mtls-listen`).

```toml
[mtls]
server_cert = "mtls/server.pem"   # the listener's certificate chain (PEM), relative to home
server_key = "mtls/server.key"    # its private key: refused unless 0600 (no group/other bits)
client_ca = "mtls/clients-ca.pem" # only client certificates issued by this CA are accepted;
                                  # the certificate's CN names the agent (`vaultproxy agent add`)
```
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator, model_validator

from vaultproxy.config.fields import Model
from vaultproxy.config.problems import TypeProblem


class MtlsSettings(Model):
    """``[mtls]``: files of the mutual-TLS listener, relative to the home (or absolute)."""

    server_cert: str | None = None
    server_key: str | None = None
    client_ca: str | None = None

    @field_validator("server_cert", "server_key", "client_ca", mode="before")
    @classmethod
    def _file(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            raise TypeProblem.one("must be a file name (relative to the home)")
        return value

    @model_validator(mode="after")
    def _all_or_none(self) -> MtlsSettings:
        given = [self.server_cert, self.server_key, self.client_ca]
        if any(given) and not all(given):
            raise TypeProblem.one("needs all of server_cert, server_key and client_ca")
        return self

    @property
    def complete(self) -> bool:
        return None not in (self.server_cert, self.server_key, self.client_ca)

    def paths(self, home: Path) -> tuple[Path, Path, Path]:
        """(server_cert, server_key, client_ca) resolved against ``home``."""
        assert self.server_cert and self.server_key and self.client_ca
        return tuple(home / p for p in (self.server_cert, self.server_key,  # type: ignore[return-value]
                                         self.client_ca))
