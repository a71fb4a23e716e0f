"""Resend one intercepted request to the address its tunnel was pinned to, through
net/outbound.py (the service's trust file, the tunnel host as SNI, no environment, no
redirects), and read the answer whole: the Mint stage's one retry after a 401.

Only body-less requests are resent, so nothing the agent streamed is needed again. The
answer is held in memory up to ``max_body_mb`` (a larger one is refused) and handed back as
a mitmproxy response for the response gate to scan like any other.
"""

from __future__ import annotations

import httpx
from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.core.pipeline import hop_free
from vaultproxy.errors import BodyTooLarge, UpstreamUnreachable
from vaultproxy.net.outbound import UpstreamClients, UpstreamKey
from vaultproxy.stages.runtime import Runtime

_clients = UpstreamClients()  # this process's; used only for resends



async def resend(
    rt: Runtime, flow: http.HTTPFlow, service: Service, headers: list[tuple[bytes, bytes]]
) -> http.Response:
    tunnel = rt.connections.tunnel(flow.client_conn.id)
    if tunnel is None or tunnel.pinned is None:
        raise UpstreamUnreachable(f"the upstream of {service.name} cannot be dialled again")
    st = rt.state()
    ip, port = tunnel.pinned
    req = flow.request
    sent = hop_free(headers)
    if not any(k.lower() == b"host" for k, _ in sent):
        authority = tunnel.host if tunnel.port == 443 else f"{tunnel.host}:{tunnel.port}"
        sent.insert(0, (b"Host", authority.encode("idna")))
    url = httpx.URL(scheme="https", host=str(ip), port=int(port), raw_path=req.data.path)
    key = UpstreamKey(service.name, tunnel.host, st.snapshot.trust_file(service),
                      service.insecure_tls)
    upstream = await _clients.send(key, httpx.Request(req.method, url, headers=sent))
    limit = st.registry.config.proxy.max_body_mb * 1024 * 1024
    try:
        body = bytearray()
        async for chunk in upstream.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge("the retried response exceeds max_body_mb")
    except httpx.HTTPError:
        raise UpstreamUnreachable(f"the upstream of {service.name} broke off") from None
    finally:
        await upstream.aclose()
    fields = hop_free(upstream.headers.raw)
    response = http.Response.make(upstream.status_code, b"", fields)
    response.raw_content = bytes(body)
    response.headers["content-length"] = str(len(body))
    return response
