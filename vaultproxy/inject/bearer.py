"""``auth = "bearer"``: ``Authorization: Bearer <value>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from vaultproxy.config.models import Service
from vaultproxy.inject.strategy import Draft, ValueStrategy, need_header_value
from vaultproxy.secret import Secret


class Bearer(ValueStrategy):
    auth: ClassVar[str] = "bearer"

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        # (``header_safe(service, need_value(service, value))``: one call)
        draft.set_header("Authorization", b"Bearer " + need_header_value(service, value))
