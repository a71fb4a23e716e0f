"""``auth = "query_param"``: ``?<param_name>=<value>`` (any agent-sent copy is replaced)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

from vaultproxy.config.models import Service
from vaultproxy.inject.query import drop_params
from vaultproxy.inject.strategy import Draft, ValueStrategy, need_option, need_value
from vaultproxy.secret import Secret


class QueryParam(ValueStrategy):
    auth: ClassVar[str] = "query_param"

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        name = need_option(service, "param_name")
        pair = (
            quote(name, safe="").encode("ascii")
            + b"="
            + quote(need_value(service, value), safe="").encode("ascii")
        )
        rest = drop_params(draft.query or b"", name, keep=lambda _: False)
        draft.query = rest + b"&" + pair if rest else pair
