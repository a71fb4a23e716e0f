"""The one record a flow carries through the stages, under one ``flow.metadata`` key.

Identify puts the ``Decision`` in it, the only carrier of the verdict (service, agent,
target, plan). Whether the proxy answered the flow itself is one recorded fact, each kind
written in one place: ``refusal`` by ``guard.deny`` (Identify enforces a decision's refusal
by raising into it), ``served`` by Reserved. Every later stage asks ``answered`` and never
infers it from ``flow.response``, which an upstream fills too. The other fields are what
one stage did that a later one needs, each written by the stage named beside it; Record
turns the decision and the outcome into the canonical audit line and sets ``outcome``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from mitmproxy import http

from vaultproxy.core.decide import Decision
from vaultproxy.keystore import Entry
from vaultproxy.mint.cache import Issued
from vaultproxy.unshadow import drop_defaults
from vaultproxy.values.redact import Redactor

KEY = "vaultproxy"

Outcome = Literal["denied", "injected", "forwarded", "error"]


@dataclass(frozen=True)
class Refusal:
    """The proxy refused the flow: the code and public message the agent got. ``reply``:
    our answer, kept whole when an upstream head had already arrived (mitmproxy reads the
    upstream body into the flow's response meanwhile; the response gate restores it)."""

    code: str
    message: str
    reply: http.Response | None = None


@dataclass(init=False)
class FlowRecord:
    """(Its ``__init__`` sets every field, and the class keeps no default of its own
    (removed below): CPython 3.12 specialises no read of an instance attribute that a class
    attribute of the same name shadows, about 3x the cost of a plain one, and the stages
    read these ~50 times per request. A field needs a plain immutable default:
    tests/unit/test_speed_stages3.py.)"""

    decision: Decision | None = None  # Identify
    refusal: Refusal | None = None  # guard.deny, the one place a refusal is recorded
    served: bool = False  # Reserved: answered by the proxy itself (the MCP endpoint)
    t0: float | None = None  # RequestGate: monotonic, when the request headers arrived
    path: str | None = None  # RequestGate: without the query, as it goes upstream
    hold_body: bool = False  # RequestGate (SPEC §10): body buffered for the honeytoken scan
    minted: Issued | None = None  # Mint: the token this request carries
    retried: bool = False  # Mint: the response is the resend's after a 401
    injected: bool = False  # Inject: a credential went in
    body: Entry | None = None  # Inject: the entry of a body substitution (or signature) waiting
    redactor: Redactor | None = None  # Inject, else ResponseGate: the response's redactor
    # ResponseGate: the header fields of a head its one-pass path buffered (no coding)
    plain_fields: tuple[tuple[bytes, bytes], ...] | None = None
    outcome: Outcome | None = None  # Record: set once the audit line is written
    inflight: bool = False  # Record: counted in ``ProxyState.inflight`` (until it ends)

    def __init__(self) -> None:
        # every field's default (the class's annotations above), in their order
        self.decision = None
        self.refusal = None
        self.served = False
        self.t0 = None
        self.path = None
        self.hold_body = False
        self.minted = None
        self.retried = False
        self.injected = False
        self.body = None
        self.redactor = None
        self.plain_fields = None
        self.outcome = None
        self.inflight = False
        # The proxy answered this flow itself (refused it, or served it): no later stage
        # decides, dials, checks, mints or injects for it. An upstream's response is not an
        # answer of ours. ``refusal is not None or served``, kept as a plain attribute (read
        # ~6 times per request, a property's call each) by the only two writers of those
        # fields, ``refuse`` and ``serve`` (and their defaults here); tests/unit/
        # test_speed_flow4.py finds every write of them in vaultproxy/ and asserts it is one
        # of these. (Not a field: no ``__init__`` argument, not in ``repr``.)
        self.answered = False
        # Inject (stages/ahead.py): what the ``forward`` line was made of and its texts, for
        # the ``request`` line (stages/record.py; audit/event.py ``forward_made``). Not a
        # field either (as ``answered``): not in ``repr`` (it holds that line and the log).
        self.ahead: tuple[Any, ...] | None = None

    def refuse(self, refusal: Refusal) -> None:
        """Record the refusal (guard.deny, the one place): answered from now on."""
        self.refusal = refusal
        self.answered = True

    def serve(self) -> None:
        """Record that the proxy served the flow itself (Reserved): answered from now on."""
        self.served = True
        self.answered = True


# The defaults live in ``__init__`` and in the fields (``dataclasses.fields``), not on the
# class: see the class's docstring.
drop_defaults(FlowRecord, [f.name for f in fields(FlowRecord)])


def record_of(flow: http.HTTPFlow) -> FlowRecord:
    """The flow's record (created on first use). Only this module and Identify (this, inline)
    write the key, only when it is not there, and only a FlowRecord (16 look-ups per
    request: no isinstance check on each): a record, once made, is the flow's for good.

    A hook that runs on every request reads it as ``flow.metadata.get(KEY) or
    record_of(flow)``: the same record (``record_of`` returns the one there, truthy or not;
    makes one only when there is none) without this call once a stage made it."""
    rec: FlowRecord | None = flow.metadata.get(KEY)
    if rec is None:
        rec = flow.metadata[KEY] = FlowRecord()
    return rec


def handed[F: Callable[..., Any]](fn: F) -> F:
    """Mark a hook's body (under ``guarded``) as taking the flow's record as its last
    argument, ``rec``: the indexed dispatch's unrolled step (seam/dispatch.py ``RECORD``)
    reads it once per event and hands it on; None from any other caller (mitmproxy's own
    manager, a test), and the body then reads it as ``flow.metadata.get(KEY) or
    record_of(flow)``. tests/unit/test_speed_stages6.py runs the chain both ways."""
    fn.__vp_record__ = KEY  # type: ignore[attr-defined]
    return fn


def idle_unless[F: Callable[..., Any]](*, rec_true: tuple[str, ...] = (),
                                       rec_set: tuple[str, ...] = (),
                                       addon_true: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare when a hook's body returns None at once and changes nothing: unless one of
    the record's ``rec_true`` fields is true, one of its ``rec_set`` fields is not None, or
    one of the stage's ``addon_true`` attributes is true (the record's only when the body is
    ``handed`` and the record exists; a dotted name, ``"decision.plan.mint"``, is true when
    each link before the last is not None and the last is true). The indexed dispatch's
    unrolled step (seam/dispatch.py ``IDLE``) tests that inline and skips the call; any
    other caller runs the body, which must return at once then.
    tests/unit/test_speed_skip10.py runs every skipped body anyway, on seeded flows, and
    compares."""
    spec = (*(("rec", n, "true") for n in rec_true), *(("rec", n, "set") for n in rec_set),
            *(("addon", n, "true") for n in addon_true))

    def mark(fn: F) -> F:
        fn.__vp_idle__ = spec  # type: ignore[attr-defined]
        return fn

    return mark
