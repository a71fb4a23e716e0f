"""``auth = "header"``: ``<header_name>: <prefix><value>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from vaultproxy.config.models import Service
from vaultproxy.inject.strategy import Draft, ValueStrategy, need_header_value, need_option
from vaultproxy.secret import Secret


class Header(ValueStrategy):
    auth: ClassVar[str] = "header"

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        name = need_option(service, "header_name")
        prefix = (service.prefix or "").encode("utf-8")
        secret = need_header_value(service, value, prefix)  # (header_safe(prefix + need_value))
        draft.set_header(name, secret)
