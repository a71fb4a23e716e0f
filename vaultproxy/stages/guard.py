"""Fail closed: every hook runs inside ``guarded``; an error becomes a deny, never a pass."""

from __future__ import annotations

import functools
import inspect
import logging
import types
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

from vaultproxy.errors import VaultproxyError, error_body, error_response
from vaultproxy.stages.flowrecord import Refusal, record_of

logger = logging.getLogger(__name__)

def error_reply(err: BaseException) -> http.Response:
    status, code, message = error_response(err)
    headers = {"Content-Type": "application/json", "X-Vaultproxy-Error": code}
    if status == 407:
        headers["Proxy-Authenticate"] = 'Basic realm="vaultproxy"'
    if code == "locked":
        # The OpenAI/Anthropic SDKs (and Claude Code) honour this instead of retrying a 5xx.
        headers["x-should-retry"] = "false"
    if isinstance(err, VaultproxyError):  # Retry-After, X-Vaultproxy-Approval (SPEC §5)
        headers.update(err.extra_headers)
    return http.Response.make(status, error_body(code, message), headers)


def deny(flow: http.HTTPFlow, err: BaseException) -> None:
    """Answer the flow with the proxy error for ``err`` (the request goes nowhere), and
    record the refusal: the one place ``FlowRecord.refusal`` is set.

    Once an upstream response exists, its body must never follow our reply: mitmproxy would
    still read it into (or stream it through) ``flow.response``. So our reply then drops
    every upstream chunk and carries its own body, and the response gate puts the reply
    back whole in the ``response`` hook (``Refusal.reply``).
    """
    status, code, message = error_response(err)
    rec = record_of(flow)
    upstream = flow.response
    if upstream is not None and upstream.stream:
        rec.refuse(Refusal(code, message))
        flow.kill()  # bytes already went out; cut the connection rather than pass more
        return
    reply = error_reply(err)
    rec.refuse(Refusal(code, message, error_reply(err) if upstream is not None else None))
    if upstream is not None:
        reply.stream = _replace_body(reply.raw_content or b"")
    flow.response = reply


def _replace_body(body: bytes) -> Callable[[bytes], list[bytes]]:
    """A stream callable that discards every upstream chunk and ends with ``body``."""

    def emit(chunk: bytes) -> list[bytes]:
        return [] if chunk else [body]

    return emit


def _fail(
    stage: str, hook: str, args: tuple[Any, ...], err: BaseException, connections: Any
) -> None:
    from vaultproxy.errors import VaultproxyError

    if not isinstance(err, VaultproxyError):
        logger.error("%s.%s failed closed: %s", stage, hook, type(err).__name__)
    for arg in args:
        if isinstance(arg, http.HTTPFlow):
            deny(arg, err)
            return
        server = getattr(arg, "server", None)
        if server is not None and hasattr(server, "error"):
            server.error = "vaultproxy refused the connection"  # server_connect
        client = getattr(getattr(arg, "context", None), "client", None)
        if client is not None and connections is not None:
            connections.mark_broken(client.id)
        return


def _connections(stage: Any) -> Any:
    rt = getattr(stage, "rt", None)
    return getattr(rt, "connections", None)


def _failer(stage: str, hook: str) -> Callable[[Any, Any, BaseException], None]:
    """What a wrapper does with its hook's exception, as a callable of its own: the
    indexed dispatch (seam/dispatch.py ``GUARD``) calls it in the wrapper's place."""

    def fail(self: Any, args: Any, err: BaseException) -> None:
        _fail(stage, hook, tuple(args), err, _connections(self))

    return fail


def guarded[F: Callable[..., Any]](fn: F) -> F:
    """Wrap a hook (sync or async) so any exception denies instead of falling through.

    The wrapper carries ``__vp_guard__`` (seam/dispatch.py ``GUARD``): the hook's body, the
    deny above, and whether an awaitable it returns runs inside the guard. The indexed
    dispatch calls the body itself with that guard inline (no wrapper frame per stage per
    request); anything else (mitmdump's own manager, a test calling the method) gets the
    wrapper, with the same outcome."""
    stage = fn.__qualname__.split(".")[0]
    fail = _failer(stage, fn.__name__)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(self: Any, *args: Any) -> Any:
            try:
                return await fn(self, *args)
            except Exception as e:  # noqa: BLE001 - deliberately total
                _fail(stage, fn.__name__, args, e, _connections(self))
                return None

        awrapper.__vp_guard__ = (fn, fail, True)  # type: ignore[attr-defined]
        return awrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except Exception as e:  # noqa: BLE001
            _fail(stage, fn.__name__, args, e, _connections(self))
            return None

    # an awaitable a synchronous hook returns is awaited by the dispatch, outside the guard
    wrapper.__vp_guard__ = (fn, fail, False)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


_Coroutine = types.CoroutineType


def guarded_sometimes_async[F: Callable[..., Any]](fn: F) -> F:
    """``guarded`` for a synchronous hook that returns an awaitable only when it has to wait
    (a mint, an approval, a pooled connection's close), and None when its work is done.

    The event dispatch (mitmproxy's and seam/dispatch.py's) awaits what a hook returns, so
    the common request needs no coroutine and no await per stage; an exception raised while
    the awaitable runs denies exactly as one raised before."""
    stage = fn.__qualname__.split(".")[0]
    fail = _failer(stage, fn.__name__)

    async def finish(self: Any, args: tuple[Any, ...], pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except Exception as e:  # noqa: BLE001 - deliberately total
            _fail(stage, fn.__name__, args, e, _connections(self))
            return None

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            res = fn(self, *args)
        except Exception as e:  # noqa: BLE001
            _fail(stage, fn.__name__, args, e, _connections(self))
            return None
        if res is None:
            return None
        if type(res) is _Coroutine or inspect.isawaitable(res):
            return finish(self, args, res)
        return res

    wrapper.__vp_guard__ = (fn, fail, True)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
