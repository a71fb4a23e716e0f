"""RequestGate: the shared pipeline's request checks (core/pipeline.py ``check_request``, which
``POST /proxy`` runs too) for a request inside an intercepted tunnel; the last stage before a
credential is added. A request to an intercepted service passes only in a shape every
upstream reads the same way; anything else is refused (``400 invalid_request`` or ``421
host_mismatch``), audited, and never reaches Inject.

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
* **Dropped headers** (the decision's ``Plan.drop``): ``Range``/``If-Range`` unless the
  service sets ``allow_range`` (a partial response can slice a reflected secret into pieces no
  redactor recognises); ``Forwarded``, ``X-Forwarded-Host``, ``X-Forwarded-Server``,
  ``X-Host``, ``X-Original-Host`` always (a balancer in front of the upstream may route on
  them, and the credential is bound to the CONNECT host alone).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from mitmproxy import http

from vaultproxy.access.enforce import OPEN
from vaultproxy.core.pipeline import check_request
from vaultproxy.errors import NotReady
from vaultproxy.stages import access
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, idle_unless, record_of
from vaultproxy.stages.guard import guarded_sometimes_async
from vaultproxy.stages.runtime import Stage


class RequestGate(Stage):
    """Both hooks are synchronous and return an awaitable only when a rule, a rate limit or
    an approval (or a held body's scan) has to run: a request to a service without rules
    costs no coroutine here."""

    @guarded_sometimes_async
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None
                       ) -> Awaitable[None] | None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        # ``self._shape(flow, rec)``, then ``access.request_headers(self.rt, flow, rec)``,
        # inline (every request; tests/unit/test_speed_req10.py compares the two): the
        # second runs itself unless the request is intercepted, no honeytoken is configured
        # and its service has no rules (``OPEN``), where it returns None and checks nothing
        req = flow.request
        data = req.data
        rec.t0 = time.monotonic()
        sent = data.path
        # as the agent sent it (``_path_of``, inline: every request); the same target as
        # the last one is the same text (``_last_path``: an agent often asks one endpoint)
        global _last_path
        last = _last_path
        if sent == last[0]:
            rec.path = last[1]
        else:
            rec.path = sent.partition(b"?")[0].decode("utf-8", "surrogateescape")
            _last_path = (sent, rec.path)
        if rec.answered:
            return None  # refused (or served) by an earlier stage
        st = self.rt.live.state  # ``rt.state()``, inline
        if st is None:
            raise NotReady()  # (503) no home is loaded
        decision = rec.decision
        if decision is None or decision.plan is None or decision.target is None:
            # not intercepted: no credential will be added (the honeytokens still looked for)
            return access.request_headers(self.rt, flow, rec)
        dialed = flow.server_conn.address
        # ``(str(dialed[0]), int(dialed[1]))``: the address itself when it is that already
        if (type(dialed) is tuple and len(dialed) == 2 and type(dialed[0]) is str
                and type(dialed[1]) is int):
            pinned: tuple[str, int] | None = dialed
        else:
            pinned = (str(dialed[0]), int(dialed[1])) if dialed else None
        check_request(req, decision.plan, decision.target, pinned)
        if data.path is not sent:  # as it goes upstream (the same bytes: the same path)
            rec.path = _path_of(data.path)
        # ACCESS (SPEC §10): honeytokens, then rules, rate limit and approval - one call
        snapshot = st.snapshot
        rules = snapshot.access  # (``snapshot.access_of(service) is OPEN``, inline)
        if (not snapshot.honeytokens.active
                and (not rules or rules.get(decision.plan.service.name, OPEN) is OPEN)):
            return None
        return access.request_headers(self.rt, flow, rec)

    @guarded_sometimes_async
    @idle_unless(rec_true=("hold_body",))
    @handed
    def request(self, flow: http.HTTPFlow, rec: FlowRecord | None = None
                ) -> Awaitable[None] | None:
        # ACCESS (SPEC §10): a body buffered for the honeytoken scan, then the rules - one call
        # (``access.request_body``, inline: None, no coroutine, for a body not held)
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        if not rec.hold_body or rec.answered:
            return None
        return access.on_request_body(self.rt, flow)


#: The last request target ``requestheaders`` decoded (``_path_of``) and its text.
_last_path: tuple[bytes, str] = (b"", "")


def _path_of(target: bytes) -> str:
    """``req.path.split("?", 1)[0]`` of a request whose ``data.path`` is ``target``: the
    part before the first ``?``, decoded as ``Request.path`` decodes (UTF-8 and
    surrogateescape: a ``?`` comes from a ``?`` byte alone, and an ASCII byte ends any
    sequence, so cutting before decoding gives the same text)."""
    return target.partition(b"?")[0].decode("utf-8", "surrogateescape")
