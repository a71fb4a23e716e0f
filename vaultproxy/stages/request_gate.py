"""RequestGate: the last stage before a credential is added. A request to an intercepted
service passes only in a shape every upstream reads the same way; anything else is refused
(``400 invalid_request`` or ``421 host_mismatch``), audited, and never reaches Inject.

* **Request target.** Origin-form (``/path``), or ``*`` for ``OPTIONS``. Absolute-form
  (``GET https://host/ HTTP/1.1``) passes only if its scheme is ``https`` and its authority is
  exactly the CONNECT target, and is then rewritten to origin-form: an upstream routes on the
  URI's host, so any other authority would carry the credential to another virtual host. An
  HTTP/2 ``:path`` must be origin-form too.
* **Header fields.** Names are RFC 9110 tokens; values hold no CR, LF or NUL. mitmproxy keeps
  an obs-fold continuation (RFC 9112 §5.2) as ``"\\r\\n "`` inside the value, which it would
  forward verbatim and an upstream could read as a new header line: refused.
* **Size.** At most ``MAX_HEADER_FIELDS`` fields and ``MAX_HEADER_BYTES`` bytes of header
  section (names + values).
* **Range.** ``Range``/``If-Range`` are removed unless the service sets ``allow_range``: a
  partial response can slice a reflected secret into pieces no redactor recognises.
* **Routing overrides.** ``Forwarded``, ``X-Forwarded-Host``, ``X-Forwarded-Server``,
  ``X-Host``, ``X-Original-Host`` are removed: a load balancer or framework in front of the
  upstream may route on them, and the credential is bound to the CONNECT host alone.
"""

from __future__ import annotations

import re
import time

from mitmproxy import http

from vaultproxy.errors import HostMismatch, InvalidRequest
from vaultproxy.hostnames import normal_host, same_target
from vaultproxy.inject.request import canonical_name
from vaultproxy.stages import access
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.runtime import Stage

MAX_HEADER_FIELDS = 256
MAX_HEADER_BYTES = 64 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_RANGE = (b"range", b"if-range")
_ROUTING = frozenset(
    {b"forwarded", b"x-forwarded-host", b"x-forwarded-server", b"x-host", b"x-original-host"}
)


def check_headers(fields: tuple[tuple[bytes, bytes], ...]) -> None:
    """Raise InvalidRequest for a header section an upstream might read differently."""
    if len(fields) > MAX_HEADER_FIELDS:
        raise InvalidRequest(f"more than {MAX_HEADER_FIELDS} header fields")
    size = 0
    for i, (name, value) in enumerate(fields):
        size += len(name) + len(value)
        if not _TOKEN.match(name):
            raise InvalidRequest(f"header field {i + 1}: the name is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise InvalidRequest(
                f"header field {i + 1}: the value holds a line break (obs-fold) or NUL"
            )
    if size > MAX_HEADER_BYTES:
        raise InvalidRequest(f"the header section is over {MAX_HEADER_BYTES // 1024} KiB")


def check_target(
    req: http.Request, host: str, port: int, dialed: tuple[str, int] | None
) -> None:
    """The request must name exactly the tunnel target, in origin-form.

    mitmproxy fills ``host``/``port`` of an origin-form request with the address it dials
    (``dialed``), and takes them from the URI of an absolute-form one (clearing the
    authority, so HTTP/1 leaves in origin-form). So: ``https``, and either the dialed
    address or the tunnel target itself; an HTTP/2 ``:authority`` must name the target.
    """
    target = (normal_host(req.host), req.port)
    if (
        req.scheme != "https"
        or (target != (host, port) and (req.host, req.port) != dialed)
        or (req.authority and not same_target(req.authority, host, port))
    ):
        raise HostMismatch("the request target names another host than the tunnel target")
    if req.http_version.startswith("HTTP/1"):
        req.authority = ""  # origin-form upstream
    path = req.data.path
    if path == b"*" and req.method == "OPTIONS":
        return
    if not path.startswith(b"/") or path.startswith(b"//"):
        raise InvalidRequest("the request target must be an origin-form path (/...)")


class RequestGate(Stage):
    @guarded
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._shape(flow)
        # ACCESS (SPEC §10): honeytokens, then rules, rate limit and approval - one call
        await access.on_request_headers(self.rt, flow)

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        # ACCESS (SPEC §10): a body buffered for the honeytoken scan - one call
        access.on_request_body(self.rt, flow)

    def _shape(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        rec = record_of(flow)
        rec.t0 = time.monotonic()
        rec.path = req.path.split("?", 1)[0]  # as the agent sent it
        if flow.response is not None:
            return  # refused by an earlier stage
        self.rt.state()  # NotReady (503) when no home is loaded
        tunnel = self.rt.connections.tunnel(flow.client_conn.id)
        if tunnel is None or tunnel.service is None:
            return  # not intercepted: no credential will be added
        rec.service = tunnel.service
        dialed = flow.server_conn.address
        pinned = (str(dialed[0]), int(dialed[1])) if dialed else None
        check_target(req, tunnel.host, tunnel.port, pinned)
        rec.path = req.path.split("?", 1)[0]
        check_headers(req.headers.fields)
        drop = _ROUTING if tunnel.service.allow_range else _ROUTING | set(_RANGE)
        fields = req.headers.fields
        if any(canonical_name(k) in drop for k, _ in fields):
            req.headers.fields = tuple((k, v) for k, v in fields if canonical_name(k) not in drop)
