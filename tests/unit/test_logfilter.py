"""The redacting log filter: a record carrying an unlocked secret, in any form the response
redactor knows, leaves the handler with the placeholder instead; whoever logged it."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import pytest

from tests.canary import make_canary
from vaultproxy.values import logfilter
from vaultproxy.values.redact import Redactor


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.logfilter")
    logger.propagate = False  # nothing reaches pytest's own capture
    logger.addHandler(handler)
    logfilter.install(logger)
    yield logger, stream
    logger.removeHandler(handler)
    logfilter.use(None)


@pytest.mark.parametrize("form", ["raw", "repr", "base64", "exception"])
def test_records_are_redacted(log: tuple[logging.Logger, io.StringIO], form: str) -> None:
    logger, stream = log
    secret = make_canary().encode()
    logfilter.use(Redactor([(secret, b"__vault.x__")]))
    if form == "raw":
        logger.warning("upstream said %s", secret.decode())
    elif form == "repr":
        logger.warning("Unexpected data from server: %r", b"junk" + secret)
    elif form == "base64":
        logger.warning("token %s", base64.b64encode(secret).decode())
    else:
        try:
            raise ValueError(f"bad header {secret.decode()}")
        except ValueError:
            logger.exception("failed")
    out = stream.getvalue()
    assert "__vault.x__" in out
    assert secret.decode() not in out and base64.b64encode(secret).decode() not in out


def test_twin_without_a_redactor_the_record_passes(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log
    marker = "not-a-secret-marker-0123456789"
    logger.warning("upstream said %s", marker)
    assert marker in stream.getvalue()
    logfilter.use(Redactor([(marker.encode(), b"__vault.x__")]))
    logger.warning("upstream said %s", marker)
    assert stream.getvalue().count(marker) == 1
