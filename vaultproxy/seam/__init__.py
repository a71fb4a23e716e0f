"""The engine seam: every use of mitmproxy's (and pyOpenSSL's, and uvicorn's) internals, in
one package, coupled to vaultproxy's stages by one explicit call at start,
``defences.install(stages.seam_hooks(rt))`` (engine/master.py, engine/mitmdump.py); nothing
registers itself on import.

* ``defences`` (and ``openssl``, ``signals``): what must change for no secret to reach the
  agent, for upstream names to be verified and for the process to keep its signals. A
  missing symbol refuses start-up (``EngineMismatch``).
* ``engine_errors``: which of our codes an error mitmproxy reports only as text is.
* ``layers``, ``upstream_tls``: the engine objects a stage needs built (the raw tunnel of an
  unregistered host; the per-service upstream TLS context).
* ``speed`` (and ``dispatch``): cheaper hook dispatch and fewer per-flow checks. A missing
  symbol keeps mitmproxy's stock behaviour, with a WARNING naming it.
* ``imports``: what a serving process does not import (mitmproxy's default-addon package,
  httpx's CLI, prometheus_client's exposition servers); ``lean()`` is called explicitly first
  thing by ``vaultproxy run`` and a worker. If a layout moved, the stock import runs.
* ``pool``: the warm upstream pool's engine side (no dial at CONNECT for a pooled service's
  tunnel; the exchange through our own blocking hooks at the request's end). A speed patch:
  a missing symbol keeps mitmproxy's own upstream connection per agent connection.
* ``lean``: a pooled service's HTTP/1.1 tunnel served without mitmproxy's HTTP layer: the
  same hooks in the same order from one task per request, one write per response; anything
  it does not handle exactly goes to mitmproxy's ``HttpLayer`` for that connection. A speed
  patch (``VAULTPROXY_LEAN_HTTP1=0`` or a missing symbol: mitmproxy's layer throughout).
* ``bypass``: once the lean layer serves a tunnel, the agent's bytes and each request's hook
  completion go straight to the ``ClientTLSLayer`` while the layers above it would only hand
  them on, and their commands straight out; anything else takes the whole stack. A speed
  patch (``VAULTPROXY_LEAN_BYPASS=0`` or a missing symbol: the whole stack for every event).
* ``fastloop``: once the lean layer serves a tunnel, the agent connection's own read loop
  runs each request's one hook in place (no task, no second ``server_event`` pass), every
  other command as mitmproxy's ``server_event`` runs it. A speed patch
  (``VAULTPROXY_LEAN_LOOP=0`` or a missing symbol: mitmproxy's loop for every connection).
* ``listener`` (and ``accept``): the proxy serves the one socket ``run`` bound, with an accept
  loop bounded under descriptor exhaustion; missing, ``run`` refuses to start.
* ``refusals``: request heads mitmproxy's HTTP/1 reader refuses, for the audit.

mitmproxy is pinned below its next minor in pyproject.toml (``make test-engine-latest`` runs
the security suite on the newest release inside it); nothing outside this package touches a
private name of mitmproxy, pyOpenSSL or uvicorn.
"""
