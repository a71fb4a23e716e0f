"""``[health]`` in services.toml: where the credential-health breach check asks (SPEC §9).

```toml
[health]
hibp_url = "https://api.pwnedpasswords.com"   # empty or absent = no breach check
ca_cert = "hibp-ca.pem"                       # extra trust anchor (relative to the home)
allow_loopback = false                        # as for services: the egress policy applies
allow_private = false
```
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import StrictBool, ValidationInfo, field_validator

from vaultproxy.config.fields import Model, ca_file
from vaultproxy.config.problems import Problems


class HealthSettings(Model):
    """``[health]``: the credential-health breach check (vaultproxy/health/)."""

    hibp_url: str = ""  # empty: no breach check
    ca_cert: str | None = None
    allow_loopback: StrictBool = False
    allow_private: StrictBool = False

    @field_validator("hibp_url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url:
            return url
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise Problems.one("must be an https:// URL") from None
        if parts.scheme != "https" or not parts.hostname:
            raise Problems.one("must be an https:// URL (or empty: no breach check)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise Problems.one("must have no query, fragment or credentials")
        if port == 0:
            raise Problems.one("must not use port 0")
        return url

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, value: str, info: ValidationInfo) -> str:
        return ca_file(value, info, empty="must be a non-empty file name")
