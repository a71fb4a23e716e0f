"""``vaultproxy.client``: the Python client for a running proxy's admin API.

``Client.from_home()`` talks over the home's ``admin.sock`` (same uid, no token needed);
``Client(url, token)`` over TCP with the admin token. ``AsyncClient`` is the same API with
``async`` methods. Every method maps to one admin endpoint (docs/operator/ADMIN-API.md) and
returns its decoded JSON; ``proxy()`` sends a request to a registered service through
``POST /proxy`` (the proxy adds the credential) and returns the service's response.

Every failure is one exception type, :class:`APIError`, carrying the proxy's ``code`` and
``message`` from its error shape ``{"error": {"message", "type", "code"}}`` (SPEC §5), or a
transport code (``not_running``, ``unreachable``, ``timeout``) when no answer came. A
service's own 4xx/5xx from ``proxy()`` is returned, not raised: only answers the proxy made
itself (``X-Vaultproxy-Error``) raise.

The httpx clients here reach only the proxy's own admin listener, never an upstream, so they
are built here rather than in net/outbound.py (which owns upstream trust and egress).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from vaultproxy.files.home import Home

__all__ = ["APIError", "AsyncClient", "Client", "Decision"]

Decision = Literal["approve", "deny"]
Query = Mapping[str, str | Sequence[str]]
ERROR_HEADER = "x-vaultproxy-error"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, read=600.0)  # unlock runs a KDF; model APIs are slow
_SOCKET_BASE = "http://vaultproxy.admin"  # the host is not used over a Unix socket


class APIError(Exception):
    """An admin API call failed: ``status`` (None when no answer came), ``code`` (SPEC §5,
    or ``not_running``/``unreachable``/``timeout``) and the proxy's ``message``."""

    def __init__(self, status: int | None, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})  # the error object's other fields ("problems")
        super().__init__(f"{code}: {message}" if status is None
                         else f"{status} {code}: {message}")


def _error_of(response: httpx.Response) -> APIError:
    code, message = response.headers.get(ERROR_HEADER) or "http_error", ""
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        err = None
    details: dict[str, Any] = {}
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        details = {k: v for k, v in err.items() if k not in ("code", "message", "type")}
    elif isinstance(err, str):
        message = err
    return APIError(response.status_code, code, message or response.reason_phrase, details)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error_of(response)
    return response.json() if response.content else {}


def _transport_error(e: httpx.TransportError, where: str) -> APIError:
    if isinstance(e, httpx.TimeoutException):
        return APIError(None, "timeout", f"no answer from {where} in time")
    if isinstance(e, httpx.ConnectError):
        return APIError(None, "not_running", f"cannot connect to {where}; is `vaultproxy "
                        "run` up for this home?")
    return APIError(None, "unreachable", f"lost the connection to {where}")


def _check_socket(uds: str | None, where: str) -> None:
    """No socket file: not running. Checked before dialling because httpcore's sync Unix
    transport leaks the socket object when connect() fails."""
    if uds is not None and not os.path.exists(uds):
        raise APIError(None, "not_running", f"no {where}; is `vaultproxy run` up for this "
                       "home?")


def _text(content: bytes | str | None) -> str | None:
    if content is None or isinstance(content, str):
        return content
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("content must be UTF-8 text: POST /proxy carries bodies as JSON "
                         "strings (send binary bodies through HTTPS_PROXY instead)") from None


def proxy_body(
    service: str, method: str, path: str, headers: Mapping[str, str] | None,
    query: Query | None, json_body: Any, content: bytes | str | None, host: str | None,
) -> dict[str, Any]:
    """The ``POST /proxy`` request body."""
    if json_body is not None and content is not None:
        raise ValueError("pass json= or content=, not both")
    body: dict[str, Any] = {"service": service, "method": method.upper(), "path": path,
                            "headers": dict(headers or {}),
                            "query": {k: v if isinstance(v, str) else list(v)
                                      for k, v in (query or {}).items()}}
    if json_body is not None:
        body["body"] = json_body
    elif content is not None:
        body["body"] = _text(content)
    if host is not None:
        body["host"] = host
    return body


def _proxy_result(response: httpx.Response) -> httpx.Response:
    if ERROR_HEADER in response.headers:  # the proxy refused: not the service's answer
        raise _error_of(response)
    return response


def _unlock_body(password: str | bytes) -> bytes:
    text = password.decode("utf-8") if isinstance(password, bytes) else password
    return json.dumps({"password": text}).encode()


def _decide_body(decision: Decision, grant_seconds: int | None) -> dict[str, Any]:
    if decision not in ("approve", "deny"):
        raise ValueError("decision must be 'approve' or 'deny'")
    body: dict[str, Any] = {"decision": decision}
    if grant_seconds is not None:
        body["grant_seconds"] = grant_seconds
    return body


def _seg(value: str) -> str:
    """One path segment: a name can never reach another endpoint."""
    return quote(value, safe="")


def _settings(home: str | Path | None) -> tuple[str, str]:
    sock = Home.resolve(None if home is None else str(home)).admin_sock
    return str(sock), f"admin.sock {sock}"


class Client:
    """Synchronous client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, token: str, *, timeout: float | httpx.Timeout =
                 DEFAULT_TIMEOUT, _uds: str | None = None) -> None:
        transport = httpx.HTTPTransport(uds=_uds) if _uds is not None else None
        headers = {} if _uds is not None else {"Authorization": f"Bearer {token}"}
        self._where = f"admin.sock {_uds}" if _uds is not None else url
        self._uds = _uds
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout,
                                  transport=transport, trust_env=False)

    @classmethod
    def from_home(cls, home: str | Path | None = None, *,
                  timeout: float | httpx.Timeout = DEFAULT_TIMEOUT) -> Client:
        """Over ``admin.sock`` of ``home`` (default: $VAULTPROXY_HOME, else
        ~/.config/vaultproxy)."""
        sock, _ = _settings(home)
        return cls(_SOCKET_BASE, "", timeout=timeout, _uds=sock)

    def __repr__(self) -> str:
        return f"vaultproxy.client.Client({self._where!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        _check_socket(self._uds, self._where)
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _transport_error(e, self._where) from None

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return _checked(self._send(method, path, **kw))

    # -- the proxy --------------------------------------------------------------------------
    def proxy(self, service: str, method: str, path: str, *,
              headers: Mapping[str, str] | None = None, query: Query | None = None,
              json: Any = None, content: bytes | str | None = None,
              host: str | None = None) -> httpx.Response:
        """One request to ``service`` with its credential added by the proxy; returns the
        service's response (read, redacted). Raises APIError only for the proxy's refusals."""
        body = proxy_body(service, method, path, headers, query, json, content, host)
        return _proxy_result(self._send("POST", "/proxy", json=body))

    # -- state ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /v1/health``: status, locked, services count, version (no auth needed)."""
        result: dict[str, Any] = self._call("GET", "/v1/health")
        return result

    def services(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/services")["services"])

    def lock(self) -> None:
        self._call("POST", "/v1/lock")

    def unlock(self, password: str | bytes) -> None:
        """The master password goes in the request body only (never a URL or argv)."""
        self._call("POST", "/v1/unlock", content=_unlock_body(password),
                   headers={"Content-Type": "application/json"})

    def reload(self) -> dict[str, Any]:
        """Re-read services.toml and keystore.enc in every worker: ``{"before", "after"}``."""
        result: dict[str, Any] = self._call("POST", "/v1/reload")
        return result

    # -- secrets (write-only values) --------------------------------------------------------
    def secrets(self) -> list[dict[str, Any]]:
        """Names, fields and times; never values."""
        return list(self._call("GET", "/v1/secrets")["secrets"])

    def set_secret(self, name: str, value: str | None = None, *,
                   fields: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if value is not None:
            body["value"] = value
        if fields:
            body["fields"] = dict(fields)
        result: dict[str, Any] = self._call("PUT", f"/v1/secrets/{_seg(name)}", json=body)
        return result

    def delete_secret(self, name: str) -> None:
        self._call("DELETE", f"/v1/secrets/{_seg(name)}")

    # -- audit, approvals, sources ----------------------------------------------------------
    def audit(self, limit: int = 100, *, since: str | None = None,
              service: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("limit", str(limit)), ("since", since),
                                    ("service", service)) if v is not None}
        return list(self._call("GET", "/v1/audit", params=params)["records"])

    def approvals(self) -> list[dict[str, Any]]:
        """Pending approvals (SPEC §10)."""
        data = self._call("GET", "/v1/approvals")
        return list(data.get("approvals", []) if isinstance(data, dict) else data)

    def decide(self, id: str, decision: Decision,
               grant_seconds: int | None = None) -> dict[str, Any]:
        """Approve or deny a held request; ``grant_seconds`` also admits the same
        agent+service+rule that long."""
        result: dict[str, Any] = self._call("POST", f"/v1/approvals/{_seg(id)}",
                                            json=_decide_body(decision, grant_seconds))
        return result

    def sources(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/sources")
        return result

    def sync(self, source: str | None = None) -> dict[str, Any]:
        body = {"source": source} if source is not None else None
        result: dict[str, Any] = self._call("POST", "/v1/sync", json=body)
        return result


class AsyncClient:
    """The :class:`Client` API with ``async`` methods (``async with AsyncClient...``)."""

    def __init__(self, url: str, token: str, *, timeout: float | httpx.Timeout =
                 DEFAULT_TIMEOUT, _uds: str | None = None) -> None:
        transport = httpx.AsyncHTTPTransport(uds=_uds) if _uds is not None else None
        headers = {} if _uds is not None else {"Authorization": f"Bearer {token}"}
        self._where = f"admin.sock {_uds}" if _uds is not None else url
        self._uds = _uds
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout,
                                       transport=transport, trust_env=False)

    @classmethod
    def from_home(cls, home: str | Path | None = None, *,
                  timeout: float | httpx.Timeout = DEFAULT_TIMEOUT) -> AsyncClient:
        sock, _ = _settings(home)
        return cls(_SOCKET_BASE, "", timeout=timeout, _uds=sock)

    def __repr__(self) -> str:
        return f"vaultproxy.client.AsyncClient({self._where!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        _check_socket(self._uds, self._where)
        try:
            return await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _transport_error(e, self._where) from None

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        return _checked(await self._send(method, path, **kw))

    async def proxy(self, service: str, method: str, path: str, *,
                    headers: Mapping[str, str] | None = None, query: Query | None = None,
                    json: Any = None, content: bytes | str | None = None,
                    host: str | None = None) -> httpx.Response:
        body = proxy_body(service, method, path, headers, query, json, content, host)
        return _proxy_result(await self._send("POST", "/proxy", json=body))

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/health")
        return result

    async def services(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/services"))["services"])

    async def lock(self) -> None:
        await self._call("POST", "/v1/lock")

    async def unlock(self, password: str | bytes) -> None:
        await self._call("POST", "/v1/unlock", content=_unlock_body(password),
                         headers={"Content-Type": "application/json"})

    async def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/v1/reload")
        return result

    async def secrets(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/secrets"))["secrets"])

    async def set_secret(self, name: str, value: str | None = None, *,
                         fields: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if value is not None:
            body["value"] = value
        if fields:
            body["fields"] = dict(fields)
        result: dict[str, Any] = await self._call("PUT", f"/v1/secrets/{_seg(name)}", json=body)
        return result

    async def delete_secret(self, name: str) -> None:
        await self._call("DELETE", f"/v1/secrets/{_seg(name)}")

    async def audit(self, limit: int = 100, *, since: str | None = None,
                    service: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("limit", str(limit)), ("since", since),
                                    ("service", service)) if v is not None}
        return list((await self._call("GET", "/v1/audit", params=params))["records"])

    async def approvals(self) -> list[dict[str, Any]]:
        data = await self._call("GET", "/v1/approvals")
        return list(data.get("approvals", []) if isinstance(data, dict) else data)

    async def decide(self, id: str, decision: Decision,
                     grant_seconds: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/approvals/{_seg(id)}", json=_decide_body(decision, grant_seconds))
        return result

    async def sources(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/sources")
        return result

    async def sync(self, source: str | None = None) -> dict[str, Any]:
        body = {"source": source} if source is not None else None
        result: dict[str, Any] = await self._call("POST", "/v1/sync", json=body)
        return result
