"""What the pool learned of its upstreams (``_h2_seen``: which (service, host) answered over
HTTP/2) goes with the pools on a reload: the reload may point a service at another upstream
(``connect_to``, hosts, ``ca_cert``). Twin: what is learned under the new policy is kept."""

from __future__ import annotations

from typing import Any

from vaultproxy.stages.pool import Pool
from vaultproxy.stages.runtime import Runtime


def test_a_reload_forgets_which_upstreams_chose_http2() -> None:
    pool = Pool(Runtime())
    first: Any = object()
    pool._new_policy(first)
    pool._h2_seen[("api", "api.test")] = True
    pool._h2_seen[("old", "old.test")] = False
    reloaded: Any = object()
    pool._new_policy(reloaded)
    assert pool._h2_seen == {}
    pool._h2_seen[("api", "api.test")] = False  # learned again, under the new policy
    assert pool._snapshot is reloaded
    assert pool._h2_seen == {("api", "api.test"): False}
