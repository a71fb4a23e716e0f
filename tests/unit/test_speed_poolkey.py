"""The pool stage picks a service's pool per request (``Pool._pool_for``) without reading
``ctx.options.http2`` each time (mitmproxy deep-copies an option's value on every read):
the option is read once per options object and again after each change of it (the
``configure`` hook). Compared with the option read per request over a seeded run of option
changes, reloads and trust files: the same pool (or a new one) every time, and a change is
seen on the very next request."""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import ctx
from mitmproxy.test import taddons

from vaultproxy.stages import pool as pool_stage

_CONTEXT = ssl.create_default_context()


class _Rt:
    def stage_loaded(self, name: str) -> None:
        pass

    def stage_unloaded(self, name: str) -> None:
        pass


def _state(snapshot: Any) -> Any:
    return SimpleNamespace(snapshot=snapshot, registry=SimpleNamespace(
        config=SimpleNamespace(proxy=SimpleNamespace(upstream_pool_idle=30))))


def _snapshot(trust: dict[str, Path]) -> Any:
    return SimpleNamespace(trust_file=lambda service: trust[service.name])


@pytest.fixture(autouse=True)
def _no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # (no trust file to read: the pool's TLS context is beside the point here)
    monkeypatch.setattr(pool_stage, "pool_context", lambda key, http2: _CONTEXT)


def test_an_option_change_is_seen_on_the_next_request() -> None:
    async def run() -> None:
        stage = pool_stage.Pool(_Rt())  # type: ignore[arg-type]
        with taddons.context(stage) as tctx:
            service = SimpleNamespace(name="svc", insecure_tls=False)
            st = _state(_snapshot({"svc": Path("/t/a.pem")}))
            tctx.options.update(http2=True)
            first = stage._pool_for(st, service, "h")  # type: ignore[arg-type]
            assert first.http2 is True
            assert stage._pool_for(st, service, "h") is first  # type: ignore[arg-type]
            ctx.options.update(http2=False)  # (as ``--set http2=false`` at run time)
            second = stage._pool_for(st, service, "h")  # type: ignore[arg-type]
            assert second is not first and second.http2 is False and first.h1.closed
            tctx.configure(stage, http2=True)
            assert stage._pool_for(st, service, "h").http2 is True  # type: ignore[arg-type]

    asyncio.run(run())


def test_the_pool_is_chosen_as_with_the_option_read_per_request() -> None:
    """Seeded: option changes, reloads (a new snapshot), a trust file that changes or is
    an equal path in another object; each request's pool against the rule written out
    (the one before this change read ``ctx.options.http2`` and compared paths by ``==``)."""
    rng = random.Random(1212)

    async def run() -> None:
        stage = pool_stage.Pool(_Rt())  # type: ignore[arg-type]
        with taddons.context(stage) as tctx:
            services = [SimpleNamespace(name=n, insecure_tls=False) for n in ("a", "b")]
            trust = {"a": Path("/t/a.pem"), "b": Path("/t/b.pem")}
            st = _state(_snapshot(dict(trust)))
            last: dict[tuple[str, str], tuple[Any, Any]] = {}
            for _ in range(600):
                roll = rng.random()
                if roll < 0.1:
                    tctx.options.update(http2=not ctx.options.http2)
                elif roll < 0.15:
                    st = _state(_snapshot(dict(trust)))  # a reload
                elif roll < 0.3:  # a trust file in place: another path, or an equal one
                    name = rng.choice("ab")  # (in another object: ``==``, not ``is``)
                    trust[name] = Path(rng.choice(["/t/a.pem", "/t/b.pem", "/t/c.pem"]))
                    st.snapshot.trust_file = lambda s, t=dict(trust): t[s.name]
                service = rng.choice(services)
                host = rng.choice(["h1", "h2"])
                up = stage._pool_for(st, service, host)  # type: ignore[arg-type]
                want_http2 = bool(ctx.options.http2)  # (the option read per request)
                assert up.http2 is want_http2
                assert up.key.trust_file == st.snapshot.trust_file(service)
                before = last.get((service.name, host))
                if before is not None:
                    kept = (before[1] is st.snapshot and before[0].http2 == want_http2
                            and before[0].key.trust_file == st.snapshot.trust_file(service))
                    assert (up is before[0]) is kept
                last[(service.name, host)] = (up, st.snapshot)

    asyncio.run(run())
