"""Inject: before the request leaves, check it belongs to its tunnel, strip what the agent
sent, and add the real credential (``requestheaders``, so bodies can still stream)."""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.errors import (
    BodyTooLarge,
    DestinationDenied,
    EgressBlocked,
    HostMismatch,
    VaultproxyError,
)
from vaultproxy.hostnames import normal_host, same_target
from vaultproxy.inject import placeholder_secret, prepare_request, substitute_body
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import guarded

M_T0 = "vaultproxy.t0"
M_SERVICE = "vaultproxy.service"
M_INJECTED = "vaultproxy.injected"
M_BODY = "vaultproxy.body"
M_AGENT = "vaultproxy.agent"
M_PATH = "vaultproxy.path"

# Encodings Scrub can decode for scanning; others are not offered upstream.
DECODABLE = ("gzip", "deflate", "br", "zstd", "identity")


class TunnelBroken(VaultproxyError):
    status, code, public = 500, "internal", "internal proxy error"


class Inject:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Inject")

    def done(self) -> None:
        runtime.stage_unloaded("Inject")

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # refused by an earlier stage
        st = runtime.state()
        req = flow.request
        req.headers.pop("proxy-authorization", None)
        tunnel = st.tunnels.get(flow.client_conn.id)
        if tunnel is None:
            self._plain_http(flow)
            return
        flow.metadata[M_AGENT] = tunnel.agent
        if tunnel.broken or flow.client_conn.id in st.broken_clients:
            raise TunnelBroken()
        service = tunnel.service
        if service is None:
            return  # passthrough tunnels carry no flows we inspect
        flow.metadata[M_SERVICE] = service
        if req.scheme != "https":
            raise DestinationDenied("plaintext HTTP inside a tunnel to a registered service")
        if tunnel.sni_mismatch or not same_target(req.host_header or "", tunnel.host, tunnel.port):
            raise HostMismatch()
        entry = st.session.entry_for(service)
        result = prepare_request(req, service, entry.value, entry.fields, st.snapshot.index)
        flow.metadata[M_INJECTED] = result.injected
        _limit_accept_encoding(req)
        if service.mode == "placeholder" and "body" in service.substitute_in:
            limit = st.registry.config.proxy.max_body_mb * 1024 * 1024
            length = req.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge()
            flow.metadata[M_BODY] = (entry, limit)
        else:
            req.stream = True

    def _plain_http(self, flow: http.HTTPFlow) -> None:
        st = runtime.state()
        req = flow.request
        host = normal_host(req.host)
        if st.registry.is_registered_host(host):
            raise DestinationDenied("plaintext HTTP to a registered service; use https")
        if st.registry.config.proxy.egress == "block":
            raise EgressBlocked(f"{host} is not registered and egress is blocked")
        index = st.snapshot.index
        for value in _surfaces(req):
            index.scan(value, "")
        req.stream = True

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        pending = flow.metadata.pop(M_BODY, None)
        if pending is None or flow.response is not None:
            return
        entry, limit = pending
        st = runtime.state()
        service = flow.metadata[M_SERVICE]
        body = flow.request.raw_content or b""
        if len(body) > limit:
            raise BodyTooLarge()
        if not body:
            return
        st.snapshot.index.scan(body, service.name)
        secret = placeholder_secret(service, entry.value, entry.fields)
        ctype = flow.request.headers.get("content-type", "")
        new = substitute_body(body, ctype, service.placeholder_text.encode(), secret)
        if new != body:
            flow.request.raw_content = new
            if "transfer-encoding" not in flow.request.headers:
                flow.request.headers["content-length"] = str(len(new))
            flow.metadata[M_INJECTED] = True


def _surfaces(req: http.Request) -> list[bytes]:
    out = [req.path.encode("utf-8", "surrogateescape")]
    for k, v in req.headers.fields:
        out.append(k)
        out.append(v)
    return out


def _limit_accept_encoding(req: http.Request) -> None:
    offered = req.headers.get("accept-encoding")
    if offered is None:
        return
    limited = _limited.get(offered)
    if limited is None:
        limited = _limit(offered)
        if len(_limited) >= 256:  # an agent sends the same value on every request
            _limited.clear()
        _limited[offered] = limited
    if limited != offered:
        req.headers["accept-encoding"] = limited


_limited: dict[str, str] = {}


def _limit(offered: str) -> str:
    keep = [
        part.strip()
        for part in offered.split(",")
        if part.split(";")[0].strip().lower() in DECODABLE
    ]
    return ", ".join(keep) if keep else "identity"
