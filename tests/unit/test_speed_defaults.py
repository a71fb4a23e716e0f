"""engine/default_addons.py: TlsConfig's and DisableH2C's ``request`` hooks with a cheap test
in front act exactly as mitmproxy's own, on the same instance and seeded flows (CRL paths of
the current CA and near misses, non-UTF-8 paths, ``--set emudhra`` on and off, h2c offers in
every spelling, the HTTP/2 preface, flows already answered, failed or not live). Twins: the
fast hooks do act (a CRL fetch is answered, h2c stripped, a preface and an eMudhra lookup
killed), so the comparison is not between two no-ops."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.addons import disable_h2c, tlsconfig
from mitmproxy.test import taddons, tflow

from vaultproxy.engine import default_addons


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Any]]:
    tls, h2c = default_addons.TlsConfig(), default_addons.DisableH2C()
    with taddons.context(tls, h2c) as tctx:
        tctx.configure(tls, confdir=str(tmp_path_factory.mktemp("confdir")))
        yield tctx, tls, h2c


def _flow(rng: random.Random, crl: str) -> http.HTTPFlow:
    f = tflow.tflow()
    req = f.request
    req.method = rng.choice(["GET", "PRI", "POST", "OPTIONS", "pri", "pRı", "PRİ"])
    path = rng.choice([
        "/x", crl, "/a" + crl, crl + "?q=1", "*", "/mitmproxy-1.crl", crl[:-1], crl.upper(),
    ])
    req.data.path = (b"/\xff\xfe" if rng.random() < 0.1 else b"") + path.encode()
    req.http_version = rng.choice(["HTTP/1.1", "HTTP/2.0", "HTTP/1.0"])
    req.host = rng.choice(["example.com", "ocsp.emsign.com", "crl.emsign.com", "ocsp.example"])
    for name, values in (("upgrade", ["h2c", "H2C", "websocket", "h2c, websocket"]),
                         ("connection", ["Upgrade, HTTP2-Settings", "keep-alive"]),
                         ("http2-settings", ["AAMAAABkAARAAAAAAAIAAAAA"])):
        if rng.random() < 0.4:
            req.headers[name] = rng.choice(values)
            if rng.random() < 0.1:
                req.headers.add(name.title(), rng.choice(values))
    if rng.random() < 0.1:
        f.response = http.Response.make(204)
    if rng.random() < 0.05:
        f.error = tflow.terr()
    f.live = rng.random() < 0.9
    return f


def _outcome(f: http.HTTPFlow) -> tuple[object, ...]:
    resp = f.response
    return (
        f.request.method, f.request.data.path, f.request.headers.fields, f.live,
        f.error.msg if f.error else None,
        None if resp is None else (resp.status_code, resp.headers.fields, resp.content),
    )


@pytest.mark.parametrize("emudhra", [False, True])
def test_same_as_mitmproxy(ours: tuple[Any, Any, Any], emudhra: bool,
                           caplog: pytest.LogCaptureFixture) -> None:
    tctx, tls, h2c = ours
    tctx.configure(tls, emudhra=emudhra)
    caplog.set_level(logging.ERROR)  # DisableH2C warns for each h2c offer
    rng = random.Random(29 + emudhra)
    crl = tls.crl_path()
    acted = {"crl": 0, "killed": 0, "h2c": 0}
    try:
        for _ in range(800):
            f = _flow(rng, crl)
            fast, stock = f.copy(), f.copy()
            fast.live = stock.live = f.live  # (``copy`` is a new, live flow)
            tls.request(fast)
            h2c.request(fast)
            tlsconfig.TlsConfig.request(tls, stock)  # mitmproxy's own hooks, same state
            disable_h2c.DisableH2C.request(h2c, stock)
            assert _outcome(fast) == _outcome(stock), f.request
            if fast.response is not None and f.response is None:
                acted["crl"] += 1
            acted["killed"] += fast.error is not None and f.error is None
            acted["h2c"] += "upgrade" in f.request.headers and "upgrade" not in fast.request.headers
    finally:
        tctx.configure(tls, emudhra=False)
    assert acted["crl"] > 50 and acted["killed"] > 5 and acted["h2c"] > 30, acted


def test_crl_path_follows_the_ca(ours: tuple[Any, Any, Any], tmp_path: Path) -> None:
    """A new CA (another confdir) is a new CRL path: the old one is no longer answered."""
    tctx, tls, _h2c = ours
    old = tls.crl_path()
    f = tflow.tflow()
    f.request.path = old
    tls.request(f)
    assert f.response is not None and f.response.headers["content-type"] == "application/pkix-crl"
    tctx.configure(tls, confdir=str(tmp_path))
    new = tls.crl_path()
    assert new != old
    stale = tflow.tflow()
    stale.request.path = old
    tls.request(stale)
    assert stale.response is None
    fresh = tflow.tflow()
    fresh.request.path = new
    tls.request(fresh)
    assert fresh.response is not None and fresh.response.status_code == 200
