"""``prewarm`` in a service entry: a whole number of connections from 0 to 20, on a service
with a host it can dial (not only wildcards); every bad value names the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_config_load import ok, problems, svc, toml_of


@pytest.mark.parametrize("value", [0, 1, 20])
def test_good_prewarm(value: int) -> None:
    assert ok(toml_of(svc(prewarm=value))).services[0].prewarm == value


def test_prewarm_is_off_by_default() -> None:
    assert ok(toml_of(svc())).services[0].prewarm == 0


@pytest.mark.parametrize("value", [-1, 21, 1.5, "2", True])
def test_bad_prewarm(value: Any) -> None:
    assert problems(toml_of(svc(prewarm=value))) == [
        'service "svc" (service[0]).prewarm: must be a whole number of connections from 0 '
        "(none) to 20"
    ]


def test_prewarm_needs_a_host_that_is_no_wildcard() -> None:
    assert problems(toml_of(svc(hosts=["*.example.com"], prewarm=2))) == [
        'service "svc" (service[0]).prewarm: needs a host that is no wildcard (which name '
        "would it dial?)"
    ]
    # the twin: one plain host beside the wildcard is enough
    assert ok(toml_of(svc(hosts=["*.example.com", "api.example.com"], prewarm=2)))
