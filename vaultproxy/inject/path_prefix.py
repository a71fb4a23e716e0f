"""``auth = "path_prefix"``: the credential goes in front of the request path (host_inject).

``path_prefix = "/bot{secret}"`` turns the agent's ``/getMe`` into ``/bot<token>/getMe``
(Telegram's Bot API). The secret is percent-encoded as one path segment (``/``, ``?``, ``#``
and ``%`` in it are escaped, so it can neither add segments nor end the path). The agent's
path must be origin-form (start with ``/``): the prefix is put in front of it and nothing
else changes. Responses are redacted as for any secret: a redirect ``Location`` or an error
body that echoes the rewritten path shows the agent the placeholder, never the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

from vaultproxy.config.models import Service
from vaultproxy.config.signed import SECRET_SLOT
from vaultproxy.errors import ConfigError, InvalidRequest
from vaultproxy.inject.strategy import Draft, need_option, need_value
from vaultproxy.secret import Secret

# RFC 3986 pchar minus "%": what a path segment may carry unescaped.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


def expand(service: Service, template: str, secret: bytes) -> bytes:
    """``template`` with ``{secret}`` replaced by the percent-encoded secret."""
    if template.count(SECRET_SLOT) != 1 or not template.startswith("/"):
        raise ConfigError([f"service.{service.name}.path_prefix: must start with '/' and "
                           "hold {secret} exactly once"])
    head, _, tail = template.partition(SECRET_SLOT)
    return (head.encode("ascii") + quote(secret, safe=_SEGMENT_SAFE).encode("ascii")
            + tail.encode("ascii"))


class PathPrefix:
    auth: ClassVar[str] = "path_prefix"

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        return need_value(service, value)

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        if not draft.path.startswith(b"/"):
            raise InvalidRequest(f"service {service.name!r}: the request target is not a path")
        prefix = expand(service, need_option(service, "path_prefix"), need_value(service, value))
        path = draft.path
        if prefix.endswith(b"/") and path.startswith(b"/"):
            path = path[1:]
        draft.path = prefix + path
