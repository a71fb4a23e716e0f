"""``auth = "basic"``: ``Authorization: Basic b64(username:password)`` from entry fields.

Placeholder mode: the placeholder stands for the ``password`` field (the agent supplies the
username, e.g. ``user:__vault.x__`` inside its own Basic header), so only ``password`` is
required there; host_inject needs both fields.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import ClassVar

from vaultproxy.config.models import Service
from vaultproxy.errors import SecretMissing
from vaultproxy.inject.strategy import Draft, need_field
from vaultproxy.secret import Secret
from vaultproxy.values.placeholders import holds


class Basic:
    auth: ClassVar[str] = "basic"

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        return need_field(service, fields, "password")

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        username = need_field(service, fields, "username")
        password = need_field(service, fields, "password")
        if holds(username, b":"):
            raise SecretMissing(
                f"service {service.name!r}: the username field holds ':' (RFC 7617 forbids it)"
            )
        draft.set_header("Authorization", b"Basic " + base64.b64encode(username + b":" + password))
