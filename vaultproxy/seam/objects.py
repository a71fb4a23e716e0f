"""Cheaper construction of mitmproxy's per-request objects (speed patches of the seam).

* ``send_data_of(connection, data)``: mitmproxy's ``SendData(connection, data)`` (two
  constructors, one through ``super()``) as one call making the same object (the TLS
  layer's records and the lean layer's response, per request); fingerprinted, else
  ``SendData`` itself.
* Every hook object (``Hook.__new__``, and ``StartHook.__new__`` before it for the
  connection handler's hooks), and every hook's completion event (``CommandCompleted.__new__``
  for ``HookCompleted``), re-checks that its class is a concrete dataclass on every
  instantiation: 6-8 per proxied request. ``install`` keeps that check for a class's first
  instance and remembers the classes that passed; an instance of one of them is then made
  as the check would have made it (``object.__new__``). A class that fails still raises
  mitmproxy's own TypeError, every time.
* Every flow gets ``str(uuid.uuid4())`` as its id (``Flow.__init__``), and every client and
  server connection object too (``connection.Connection.id``; 4-5 per agent connection): a
  UUID object built and validated, then formatted, from one ``getrandom`` syscall each.
  ``uuid4_text`` makes the same text from the same 16 random bytes, with the version and
  variant bits set as ``uuid.UUID`` sets them; without bytes it hands out the next of a batch
  of 64 ids made from one ``os.urandom`` read (the same kernel CSPRNG, one syscall per 64
  ids). A forked child never hands out an id of its parent's batch (``os.register_at_fork``
  drops the batch in the child). ``install`` gives mitmproxy's flow and connection modules a
  copy of the ``uuid`` module whose ``uuid4()`` returns it (``str`` of a string is the
  string). tests/unit/test_speed_objects.py compares both with the stock ones, and forks.
* ``headers_of`` and ``response_of`` make the ``Headers`` and ``Response`` of an upstream
  response head (stages/pool.py) as mitmproxy's constructors make them, without their
  per-field copies, conversions and keyword update, for what they handle exactly (a list or
  tuple of ``(bytes, bytes)`` tuples; bytes version and reason); anything else goes to the
  constructors. tests/unit/test_speed_objects.py compares them on seeded input.
  ``headers_made`` skips the type check for the fields of a head ``parse_head`` read (its
  pairs are bytes by construction; tests/unit/test_speed_h1fields.py compares it).
Each part checks that mitmproxy still has what it changes; if not, that part stays
mitmproxy's own (seam/speed.py logs one WARNING)."""

from __future__ import annotations

import logging
import os
import types
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from mitmproxy import connection, flow, hooks, http
from mitmproxy.proxy import commands, events

from vaultproxy.seam.need import missing

_made_before: set[type] = set()  # hook classes whose first instance passed the check

BATCH = 64  # ids made from one os.urandom read
_ids: Iterator[str] = iter(())  # the rest of the current batch


_VERSION_4 = bytes((x & 0x0F) | 0x40 for x in range(256))  # byte 6 of each id
_VARIANT = bytes((x & 0x3F) | 0x80 for x in range(256))  # byte 8: the RFC 4122 variant


def _batch(raw: bytes) -> list[str]:
    """``str(uuid.UUID(bytes=chunk, version=4))`` of each 16-byte chunk of ``raw``, made
    with a few operations on the whole batch instead of a dozen per id: the version and
    variant bits set on every 16th byte, the bytes hex-encoded with a "-" after every two
    (``aaaa-bbbb-...-hhhh-`` per id, 40 characters), the dashes after the 1st, 6th and 7th
    group dropped (``aaaabbbb-cccc-dddd-eeee-ffffgggghhhh-``) and each id's last one made a
    space to split on."""
    b = bytearray(raw)
    b[6::16] = b[6::16].translate(_VERSION_4)
    b[8::16] = b[8::16].translate(_VARIANT)
    text = bytearray(b.hex("-", -2).encode())
    text += b"-"
    del text[34::40]  # (each deletion shortens every id's block by one)
    del text[29::39]
    del text[4::38]
    text[36::37] = b" " * (len(text) // 37)
    return text.decode().split()


def uuid4_text(raw: bytes | None = None) -> str:
    """``str(uuid.uuid4())``, or of ``uuid.UUID(bytes=raw, version=4)`` for 16 given bytes."""
    global _ids
    if raw is not None:
        b = bytearray(raw)
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    # ``next`` on a list iterator is one step under the GIL: two threads never get the
    # same id; two refilling at once each make a batch of their own.
    text = next(_ids, None)
    if text is None:
        _ids = fresh = iter(_batch(os.urandom(16 * BATCH)))
        text = next(fresh)
    return text


def _forget_batch() -> None:
    """In a forked child: the parent's remaining ids are the parent's (and its other
    children's) to hand out, never this process's."""
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_batch)


def _uuid_module() -> types.ModuleType:
    """A copy of the ``uuid`` module whose ``uuid4`` is ``uuid4_text``."""
    copy = types.ModuleType(uuid.__name__, uuid.__doc__)
    copy.__dict__.update({k: v for k, v in vars(uuid).items() if not k.startswith("__")})
    copy.uuid4 = uuid4_text  # type: ignore[attr-defined]
    return copy


def _checked_once(stock: Any) -> Any:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls in _made_before:
            return object.__new__(cls)
        made = stock(cls, *args, **kwargs)  # mitmproxy's checks (raise for a bad class)
        _made_before.add(cls)
        return made

    return staticmethod(__new__)


def missing_symbol() -> str | None:
    """What these patches need of mitmproxy that it no longer has (None: all there)."""
    symbol = (missing(hooks, "Hook") or missing(commands, "StartHook")
              or missing(events, "CommandCompleted") or missing(flow, "uuid"))
    if symbol is None:
        for cls in CHECKED:
            if "__new__" not in vars(cls):
                symbol = f"{cls.__name__}.__new__"
                break
    if symbol is None and not _stock_uuid(flow):
        symbol = "flow.uuid.uuid4"
    return symbol


#: the classes whose ``__new__`` checks its class on every instance (``_checked_once``)
CHECKED: tuple[type, ...] = tuple(
    c for c in (getattr(hooks, "Hook", None), getattr(commands, "StartHook", None),
                getattr(events, "CommandCompleted", None)) if c is not None)
#: each one's own ``__new__`` as ``install`` found it (for the tests)
STOCK_NEW: dict[type, Any] = {}


def _stock_uuid(module: Any) -> bool:
    """Does ``module`` make its ids with the stock ``uuid.uuid4``?"""
    return getattr(getattr(module, "uuid", None), "uuid4", None) is uuid.uuid4


def install() -> bool:
    """Apply both patches; False (nothing changed) if mitmproxy moved what they change."""
    if getattr(hooks.Hook, "_vaultproxy_fast", False):
        return True
    if missing_symbol() is not None:
        return False
    for cls in CHECKED:
        stock = vars(cls)["__new__"]
        stock = stock.__func__ if isinstance(stock, staticmethod) else stock
        STOCK_NEW[cls] = stock
        cls.__new__ = _checked_once(stock)  # type: ignore[method-assign,assignment]
    fast_uuid = _uuid_module()
    setattr(flow, "uuid", fast_uuid)  # noqa: B010 - (not exported)
    if _stock_uuid(connection):  # (else: connection ids stay mitmproxy's own)
        setattr(connection, "uuid", fast_uuid)  # noqa: B010 - (not exported)
    if send_data_of is getattr(commands, "SendData", None):
        logging.getLogger(__name__).warning(
            "mitmproxy's SendData is not the one vaultproxy's send_data_of was written "
            "against: each is made by its own constructor (slower)")
    hooks.Hook._vaultproxy_fast = True  # type: ignore[attr-defined]
    return True


def headers_of(fields: Any) -> http.Headers:
    """``http.Headers(fields)``: for a list or tuple of ``(bytes, bytes)`` tuples the same
    object without the constructor's copy of each field, its type check (done here, by
    exact type) and its keyword update (none)."""
    if type(fields) is list or type(fields) is tuple:
        for field in fields:
            if (type(field) is not tuple or len(field) != 2 or type(field[0]) is not bytes
                    or type(field[1]) is not bytes):
                break
        else:
            made = object.__new__(http.Headers)
            made.fields = tuple(fields)
            return made
    return http.Headers(fields)


def headers_made(fields: Sequence[tuple[bytes, bytes]]) -> http.Headers:
    """``http.Headers(fields)`` for fields known to be ``(bytes, bytes)`` tuples because
    they were made so (net/h1pool.py ``parse_head``: ``findall``'s pairs of two byte
    groups; ``parse_known``: a tuple of them, which ``tuple()`` returns as it is):
    ``headers_of`` without its per-field type check. Anything else: ``headers_of``."""
    made = object.__new__(http.Headers)
    made.fields = tuple(fields)
    return made


#: The ``flow.metadata`` key of a response head the response gate read in one pass and left
#: as it was (stages/response_gate.py ``_plain_small_head``): ``(fields, block, keep)``,
#: ``fields`` the head's ``Headers.fields`` tuple then, ``block`` their wire form
#: (``wire_block(fields)``), ``keep`` True when no Connection field among them says
#: ``close`` (none, or one that is ``keep-alive``); their names hold no Transfer-Encoding
#: and one Content-Length. It tells about a response only while its ``headers.fields`` is
#: that very tuple (seam/lean.py checks: a stage that sets a field makes a new one). The
#: block is the head as it goes to the agent (after the gate: no secret's form in it). A
#: protocol, as dispatch's ``RECORD``: the seam does not import the stages.
HEAD_NOTE = "vaultproxy.head"


def wire_block(fields: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The fields as ``Headers.__bytes__`` writes them, without the last CRLF: each
    ``name: value``, joined by CRLF (seam/lean.py ``_head``'s block)."""
    return b"\r\n".join([b": ".join(field) for field in fields])


def no_field_type_check(self: object) -> None:
    """``MessageData.__post_init__`` as seam/speed.py sets it (mitmproxy's development type
    check of every field dropped): nothing."""
    return None


#: each message data class's fields, in the order its dataclass ``__init__`` sets them
REQUEST_FIELDS = ("http_version", "headers", "content", "trailers", "timestamp_start",
                  "timestamp_end", "host", "port", "method", "scheme", "authority", "path")
RESPONSE_FIELDS = REQUEST_FIELDS[:6] + ("status_code", "reason")


def _plain_data(cls: Any, names: tuple[str, ...]) -> bool:
    """Does ``cls(**fields)`` do no more than set ``names``, in that order, then call
    ``MessageData.__post_init__``? (A dataclass's generated ``__init__`` with exactly these
    fields, all passed; nothing in its line with its own ``__new__``, ``__setattr__`` or
    slots; no ``__post_init__`` but ``MessageData``'s.)"""
    import dataclasses

    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        return False
    if tuple(f.name for f in dataclasses.fields(cls)) != names:
        return False
    if any(not f.init for f in dataclasses.fields(cls)):
        return False
    init = vars(cls).get("__init__")  # (the dataclass's: compiled from its own text)
    code = getattr(init, "__code__", None)
    if (code is None or code.co_filename != "<string>" or code.co_name != "__init__"
            or code.co_names != (*names, "__post_init__")):
        return False
    base = getattr(http, "MessageData", None)
    for klass in cls.__mro__[:-1]:
        own = set(vars(klass))
        if {"__new__", "__setattr__", "__slots__"} & own:
            return False
        if "__post_init__" in own and klass is not base:
            return False
    return True


#: ``RequestData(...)`` and ``ResponseData(...)`` may be made field by field (``_plain_data``)
#: while ``MessageData.__post_init__`` is ``no_field_type_check`` (asked at each message)
DATA_PLAIN: bool = (_plain_data(getattr(http, "RequestData", None), REQUEST_FIELDS)
                    and _plain_data(getattr(http, "ResponseData", None), RESPONSE_FIELDS))
_MessageData: Any = getattr(http, "MessageData", None)
_ResponseData: Any = getattr(http, "ResponseData", None)


def response_of(http_version: Any, status_code: int, reason: Any, headers: Any,
                timestamp_start: float) -> http.Response:
    """``http.Response(http_version, status_code, reason, headers, None, None,
    timestamp_start=..., timestamp_end=None)``: for bytes version and reason and a
    ``Headers`` the same object without the constructor's conversions (its
    ``ResponseData`` made field by field as its dataclass ``__init__`` makes it, while
    ``MessageData.__post_init__`` does nothing (``DATA_PLAIN``); else by that ``__init__``)."""
    if type(http_version) is bytes and type(reason) is bytes and type(headers) is http.Headers:
        made = object.__new__(http.Response)
        if DATA_PLAIN and _MessageData.__post_init__ is no_field_type_check:
            data = object.__new__(_ResponseData)
            data.http_version = http_version
            data.headers = headers
            data.content = None
            data.trailers = None
            data.timestamp_start = timestamp_start
            data.timestamp_end = None
            data.status_code = status_code
            data.reason = reason
            made.data = data
            return made
        made.data = http.ResponseData(
            http_version=http_version, headers=headers, content=None, trailers=None,
            timestamp_start=timestamp_start, timestamp_end=None, status_code=status_code,
            reason=reason)
        return made
    return http.Response(http_version, status_code, reason, headers, None, None,
                         timestamp_start=timestamp_start, timestamp_end=None)


#: mitmproxy's ``SendData.__init__`` (``super().__init__(connection); self.data = data``) and
#: ``ConnectionCommand.__init__`` (``self.connection = connection``): ``need.fingerprint``
#: and ``need.code_fingerprint`` of each, as ``send_data_of`` repeats them
SEND_DATA_FINGERPRINTS = {
    "SendData.__init__": ("b07f9576a4b83f1b", "c69b310707ebcf42"),
    "ConnectionCommand.__init__": ("86bde377991bed0d", "b723cd1983348150"),
}


def _send_data_maker() -> Any:
    """``send_data_of`` if mitmproxy's constructors are the ones it repeats (and nothing in
    the class's line has its own ``__new__``, ``__setattr__`` or slots), else
    ``commands.SendData`` itself."""
    from vaultproxy.seam.need import unchanged

    cls: Any = getattr(commands, "SendData", None)
    base: Any = getattr(commands, "ConnectionCommand", None)
    if cls is None or base is None or base not in cls.__mro__:
        return cls
    for klass in cls.__mro__[:-1]:
        if {"__new__", "__setattr__", "__slots__"} & set(vars(klass)):
            return cls
    if not (unchanged(cls.__init__, *SEND_DATA_FINGERPRINTS["SendData.__init__"])
            and unchanged(base.__init__, *SEND_DATA_FINGERPRINTS["ConnectionCommand.__init__"])):
        return cls
    new = object.__new__

    def send_data_of(connection: Any, data: bytes) -> Any:
        """``commands.SendData(connection, data)``: the same object (its ``connection``,
        then its ``data``) without the two constructors and their ``super()``."""
        made = new(cls)
        made.connection = connection
        made.data = data
        return made

    return send_data_of


#: ``commands.SendData(connection, data)``, made with one call (``_send_data_maker``)
send_data_of: Any = _send_data_maker()


def _data_received_maker() -> Any:
    """``data_received_of`` if ``events.DataReceived`` is still the dataclass it repeats
    (exactly the fields ``connection`` and ``data``, both set by its generated ``__init__``,
    no ``__post_init__``, nothing in its line with its own ``__new__``, ``__setattr__`` or
    slots), else ``events.DataReceived`` itself."""
    import dataclasses

    cls: Any = getattr(events, "DataReceived", None)
    made_by_dataclass: bool = cls is not None and dataclasses.is_dataclass(cls)
    if not made_by_dataclass:
        return cls
    fields: Any = dataclasses.fields(cls)
    if ([f.name for f in fields] != ["connection", "data"] or any(not f.init for f in fields)
            or hasattr(cls, "__post_init__")):
        return cls
    init = vars(cls).get("__init__")
    code = getattr(init, "__code__", None)
    if code is None or code.co_filename != "<string>" or code.co_names != ("connection",
                                                                           "data"):
        return cls
    for klass in cls.__mro__[:-1]:
        if {"__new__", "__setattr__", "__slots__"} & set(vars(klass)):
            return cls
    new = object.__new__

    def data_received_of(connection: Any, data: bytes) -> Any:
        """``events.DataReceived(connection, data)``: the same object (its ``connection``,
        then its ``data``) without the type call and the dataclass's ``__init__``."""
        made = new(cls)
        made.connection = connection
        made.data = data
        return made

    return data_received_of


#: ``events.DataReceived(connection, data)``, made with one call (``_data_received_maker``)
data_received_of: Any = _data_received_maker()

#: mitmproxy's ``Flow.__init__`` as ``http_flow_plain`` lets the lean layer repeat it
#: (seam/lean.py ``_serve``): its ``need.fingerprint`` and ``need.code_fingerprint``
FLOW_INIT_FINGERPRINT = ("7c7b602cfb75bf18", "b44e93c572aafdbe")


def http_flow_plain() -> bool:
    """May ``http.HTTPFlow(client, server)`` be made attribute by attribute, as
    ``Flow.__init__`` sets them (seam/lean.py ``_serve``)? Yes if ``HTTPFlow`` has no
    ``__init__`` of its own, ``Flow.__init__`` is the one written against (fingerprint),
    and nothing in the class's line has its own ``__new__``, ``__setattr__`` or slots."""
    from vaultproxy.seam.need import unchanged

    cls: Any = getattr(http, "HTTPFlow", None)
    base: Any = getattr(flow, "Flow", None)
    if cls is None or base is None or base not in cls.__mro__:
        return False
    if any("__init__" in vars(klass) for klass in cls.__mro__[:cls.__mro__.index(base)]):
        return False
    for klass in cls.__mro__[:-1]:
        if {"__new__", "__setattr__", "__slots__"} & set(vars(klass)):
            return False
    return unchanged(base.__init__, *FLOW_INIT_FINGERPRINT)
