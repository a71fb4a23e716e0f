"""The warm pool's HTTP/1.1 upstream connections, without httpcore's pool and anyio.

A profile of the pooled keep-alive path put about a third of the proxy's CPU in httpcore's
``AsyncConnectionPool`` (a scan of every connection per request, anyio locks and
cancel-shielded checkpoints, its TLS stream wrapper) around the few microseconds h11 spends
on the bytes. For an upstream that speaks HTTP/1.1 the stage (stages/pool.py) uses this
instead: an asyncio ``Protocol`` per connection on a non-blocking ``ssl.SSLSocket`` the loop
polls (``_TLSSocket``: OpenSSL reads and writes the socket in C; the loop's own TLS
transport, ``transport="loop"``, moved every record through memory BIOs), h11 (the
strict parser httpcore uses: it refuses the smuggling shapes the hostile-upstream tests
send) for the bytes, and a LIFO stack of idle connections per (address, SNI).

h11's per-event machinery was the largest part of what is left per request, so the common
exchange skips it without reading anything differently: ``request_bytes`` writes the bytes
h11's writer would (after h11's own grammar check of every name and value, over all of them
at once), and ``parse_head`` reads a response head only in the plainest shape (HTTP/1.1,
CRLF, one Content-Length, no Transfer-Encoding, not 1xx/101/204/304, not for HEAD), exactly
as h11 reads it; anything else (every ambiguity a hostile upstream plays on two parsers)
goes to h11 with every byte read so far (tests/unit/test_speed_h1request.py,
test_speed_h1response.py compare both with h11). A head with the field names of the
connection's last one is read by one pattern made for those names (``parse_known``), which
takes only what ``parse_head`` reads the same (test_speed_h1known.py).

It keeps what the httpcore pool guarantees:

* a connection is dialled to the IP literal the caller checked, verified for the SNI under
  the pool's ``SSLContext`` (the service's trust file; net/outbound.py ``pool_context``),
  and resumes the TLS session of an earlier one for that name (``TLSSessions``, on that
  context: a session never crosses pools);
* an idle connection is reused only for the same address and SNI, only if the upstream
  neither closed it nor sent anything unasked while it waited, and only within ``idle``
  seconds (``drop_expired`` closes the rest);
* one that saw a protocol error, a timeout, a body not read to its end, bytes after a
  response, or ``Connection: close`` is closed, never reused; ``close()`` (a reload)
  closes the idle ones at once and each busy one when its exchange ends;
* failures are httpcore's exception types, so the stage's error wording
  (``pool_error_text``) and its resend rule (once, idempotent, no response byte seen) hold
  as they did; what each response head h11 reads held is left in ``head_seen``
  (``HeadScan``); a head the fast path reads (``read_head``) leaves it as it was: the
  stage asks it only of h11's heads and of an ``exchange`` that raised.

An upstream that answers the TLS handshake with ALPN ``h2`` raises ``WantsHTTP2``: its
requests go through the httpcore pool (HTTP/2 multiplexing)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import operator
import re
import select
import socket
import ssl
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, Literal

import h11
import httpcore

from vaultproxy.net.grammar import TOKEN
from vaultproxy.net.namesets import NameSets
from vaultproxy.net.outbound import HeadScan, readable, sessions_of

logger = logging.getLogger(__name__)

# what this process's HTTP/1.1 pools did; one INFO line says when the first exchange went
# out this way (what tests read of a running proxy)
stats = {"exchanges": 0, "dials": 0}

MAX_INCOMPLETE_EVENT = 100 * 1024  # a response head's most (as httpcore's)
MAX_IDLE = 20  # idle connections kept per (address, SNI), as the httpcore pool's keep-alive
_HIGH_WATER = 256 * 1024  # unread response bytes at which the socket stops being read
_TICKET_READS = 8  # reads that look for a TLS 1.3 ticket (a server may send none)

# h11's own grammar for what it sends (h11/_abnf.py: ``field_name``, ``field_value``), over
# all names joined by ":" and all values joined by "\n" at once: neither separator can
# occur inside a valid element, and the count of separators must be one less than the
# fields, so a name holding ":" or a value holding "\n" (a credential with a CRLF) fails.
_FIELD_NAME = TOKEN
# (``[^\x00\s]`` spelled out: h11's class, as one table in the compiled pattern rather than a
# table and a category test per byte; tests/unit/test_speed_h1request.py compares them)
# Possessive (``++``, ``*+``): its runs of visible bytes and of spaces and tabs alternate, so
# a match never gives a byte back; without the backtracking state the match of one
# request's values costs ~3.6k instructions less (tests/unit/test_speed_h1names.py).
_FIELD_VALUE = (rb"(?:[^\x00\t\n\x0b\x0c\r ]++(?:[ \t]++[^\x00\t\n\x0b\x0c\r ]++)*+)?")
_NAMES = re.compile(_FIELD_NAME + rb"(?::" + _FIELD_NAME + rb")*")
# (``_VALUES``: the values' grammar ``request_bytes`` reads with bytes operations; the
# reference tests/unit/test_speed_h1send.py compares them with)
_VALUES = re.compile(_FIELD_VALUE + rb"(?:\n" + _FIELD_VALUE + rb")*")
# h11's request line grammar (``method``: a token; ``request_target``: visible characters)
_REQUEST_LINE = re.compile(_FIELD_NAME + rb" [\x21-\x7e]+")
# (what ``request_bytes`` takes without that match: a method of ASCII letters, a token, and
# a target of visible characters, which ``translate`` deletes all of; anything else is
# matched. tests/unit/test_speed_h1names.py compares the two.)
_VISIBLE = bytes(range(0x21, 0x7F))

# (how many names; the head with ``%s`` for the method, the target and each value in the
# order h11 writes them, Host first; the index of the ``Content-Length`` among those values,
# -1: none; None when the values go in the fields' order, else what takes them in h11's;
# the ``Connection``/``Expect`` fields h11 needs to read the response, lower-cased, by index)
_Shape = tuple[int, bytes, int, Callable[[Any], Any] | None, tuple[tuple[bytes, int], ...]]
_REFUSED: _Shape = (-1, b"", -1, None, ())  # (no count of fields is -1)
# What ``request_bytes`` reads of the field names alone (``_names_shape``), by the names
# joined: an agent sends the same few sets of names again and again. Names only: never a
# value (a credential is a value), so nothing here outlives a credential or holds one. At
# most this many sets of names, each at most this long (past that: read every time).
_SHAPES: dict[bytes, _Shape] = {}
_SHAPES_MAX = 256
_SHAPE_NAMES_MAX = 2048

# A value's bytes for ``request_bytes``' test of the values joined by "\n" (h11's
# ``field_value``: no NUL, CR, LF, VT or FF, no space or tab at either end): NUL, CR, VT
# and FF become LF (each one separator more than the n - 1 there are), a tab a space,
# every other byte stays (tests/unit/test_speed_h1send.py compares the test with
# ``_VALUES`` and the count of separators, which it replaces).
_VALUE_BYTES = bytes(0x0A if i in (0x00, 0x0D, 0x0B, 0x0C) else 0x20 if i == 0x09 else i
                     for i in range(256))


def _names_shape(names: bytes) -> _Shape:
    """Of the names joined by ":", what ``request_bytes`` writes them as (``_Shape``);
    ``_REFUSED`` for names h11 refuses (one no token) or frames itself (no Host or two, a
    ``Transfer-Encoding``, two lengths)."""
    if not _NAMES.fullmatch(names):
        return _REFUSED
    split = names.split(b":")  # (the names: a token holds no ":")
    low = names.lower().split(b":")
    if low.count(b"host") != 1 or b"transfer-encoding" in low:
        return _REFUSED  # (no Host or two, or a Transfer-Encoding: h11 frames or refuses it)
    if low.count(b"content-length") > 1:
        return _REFUSED
    host = low.index(b"host")
    order = [host] + [i for i in range(len(low)) if i != host]  # (h11: Host first)
    sent = [low[i] for i in order]
    head = b"".join([split[i].replace(b"%", b"%%") + b": %s\r\n" for i in order])
    return (len(low), b"%s %s HTTP/1.1\r\n" + head + b"\r\n",
            sent.index(b"content-length") if b"content-length" in sent else -1,
            None if host == 0 else operator.itemgetter(*order),
            tuple((name, i) for i, name in enumerate(sent)
                  if name == b"connection" or name == b"expect"))


def request_bytes(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]],
                  body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """The bytes h11's writer makes of this request (Host first, then the rest in order,
    the body), built in one formatting of the head the names make (``_names_shape``)
    instead of h11's per-field validation and writes; and the fields h11's state machine
    needs to read the response (Host, ``Connection``, ``Expect``). None for anything h11
    would refuse or write differently (an illegal method, target, name or value, no Host or
    two, a ``Transfer-Encoding``, a ``Content-Length`` that is not the body's or not
    alone): h11 itself then writes or refuses it (``_Conn.send``). What the names alone
    tell is read once per set of names (``_SHAPES``); the values are read every time."""
    n = len(fields)
    if not n:
        return None  # (no Host: h11 refuses it)
    # (the names and the values as two tuples, in C: ``zip(*fields)`` of (name, value)
    # pairs; two list comprehensions before, tests/unit/test_speed_pool10.py)
    keys, values = zip(*fields)  # noqa: B905 - pairs
    names = b":".join(keys)
    shape = _SHAPES.get(names)
    if shape is None:
        shape = _names_shape(names)
        if len(names) <= _SHAPE_NAMES_MAX:
            if len(_SHAPES) >= _SHAPES_MAX:
                _SHAPES.clear()
            _SHAPES[names] = shape
    # (as many names as fields: none held a ":"; never for ``_REFUSED``)
    if shape[0] != n:
        return None
    _, head, length_at, order, hop = shape
    # h11's ``field_value`` for each value (what ``_VALUES`` and the count of separators
    # read, as bytes operations): no NUL, CR, VT or FF, no LF but the n - 1 separators, no
    # space or tab next to a separator or at either end. (A forbidden byte reads as one
    # more separator; ``find``, not ``in``: a bytes ``in`` first tries its operand as an
    # integer, and makes and clears a TypeError for that.)
    seen = b"\n".join(values).translate(_VALUE_BYTES)
    if (seen.count(b"\n") != n - 1 or seen.find(b" \n") >= 0 or seen.find(b"\n ") >= 0
            or seen[:1] == b" " or seen[-1:] == b" "
            or not ((method.isalpha() and target and not target.translate(None, _VISIBLE))
                    or _REQUEST_LINE.fullmatch(b"%s %s" % (method, target)))):
        return None
    if order is not None:
        values = order(values)
    if length_at >= 0:
        if values[length_at] != b"%d" % len(body):
            return None
    elif body:
        return None
    state = [(b"host", values[0])]
    if hop:
        state += [(name, values[i]) for name, i in hop]
    head %= (method, target, *values)
    return (head + body if body else head), state


# The status line h11 reads (``status_line``), version 1.1 only: a three-digit code, then
# nothing or a space and a reason (h11's ``reason_phrase``: no NUL, CR, LF, VT or FF), CRLF.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: ([^\x00\r\n\x0b\x0c]*))?\r\n")
# The most common one, which ``parse_head`` takes without the match (its status 200, its
# reason "OK", as ``_STATUS_LINE`` reads it: tests/unit/test_speed_h1fields.py)
_OK_LINE = b"HTTP/1.1 200 OK\r\n"


def _status_of(data: bytes) -> tuple[int, bytes, int] | None:
    """The status line at the start of ``data`` as ``_STATUS_LINE`` reads it: its status,
    reason and end (past its CRLF); None for none, or a status the pool's reader does not
    take (1xx, 204, 304, 600 and above: those heads go to h11)."""
    status_line = _STATUS_LINE.match(data)
    if status_line is None:
        return None
    status = int(status_line[1])
    if not 200 <= status < 600 or status == 204 or status == 304:
        return None
    return status, status_line[2] or b"", status_line.end()


# One field line, with the CRLF before it: a token, ":", the value without its leading
# spaces and tabs (its trailing ones: ``parse_head``), no NUL, CR, LF, VT or FF in it, and
# a CRLF right after it. ``findall`` over the field block (the CRLF that ends the status
# line up to the one that ends the last field line) then yields one (name, value) per
# CRLF that starts a field line; it yields one for every CRLF but the last (``parse_head``'s
# count) only when each line between two CRLFs is one whole field line: no bare CR or LF,
# no NUL/VT/FF, no obs-fold, no line that is no field (a match stops at the first CR, LF,
# NUL, VT or FF after its name, and needs a CRLF there).
# (The value's class spelled as its two ranges, ``[^\x00\r\n\x0b\x0c]`` being the same
# bytes: two range tests per byte in the compiled pattern rather than a negated list of a
# literal and a range, ~2k instructions less per head.)
# Possessive (``++``, ``*+``): the name stops at the colon (no token holds one) and the value
# at the first byte its class lacks, whatever the spaces and tabs before it took; giving a
# byte back never finds the CRLF, so no match is lost, and ~1.6k instructions less per head
# (tests/unit/test_speed_h1fields.py compares the greedy one).
# (Its two ranges in that order, the common one first: as ``_KNOWN_VALUE``.)
_FIELD_LINE = re.compile(rb"\r\n(" + _FIELD_NAME
                         + rb"+):[ \t]*+([\x0e-\xff\x01-\x09]*+)(?=\r\n)")

# What ``parse_head`` reads of a response's field names alone (``_head_shape``), by the
# names: an upstream sends the same few sets of names again and again. Names only: never a
# value (a credential or a cookie is a value), so nothing here holds one. At most this many
# sets, each of at most this many names and bytes of names (past that: read every time).
_HEAD_SHAPES: dict[tuple[bytes, ...], tuple[int, tuple[int, ...]] | None] = {}
_HEAD_SHAPES_MAX = 256
_HEAD_NAMES_MAX = 64
_HEAD_NAME_BYTES_MAX = 2048
_NAME = operator.itemgetter(0)


def _head_shape(names: tuple[bytes, ...]) -> tuple[int, tuple[int, ...]] | None:
    """Of a response head's field names (tokens): (the index of its one
    ``Content-Length``, the indexes of its ``Connection`` fields); None when there is no
    ``Content-Length`` or two, or a ``Transfer-Encoding``."""
    low = [name.lower() for name in names]
    if b"transfer-encoding" in low or low.count(b"content-length") != 1:
        return None
    return (low.index(b"content-length"),
            tuple(i for i, name in enumerate(low) if name == b"connection"))


@types.coroutine
def _done(fut: asyncio.Future[None]) -> Generator[Any, None, None]:
    """``await fut``, as ``asyncio.Future.__await__`` (asyncio/futures.py) does it, as a
    generator: CPython 3.12 resumes the C future's iterator through ``tp_iternext``, whose
    result comes back as a StopIteration raised and cleared (a few thousand instructions,
    once per response); a generator's return reaches the awaiting coroutine without one."""
    if not fut.done():
        fut._asyncio_future_blocking = True
        yield fut  # (the task waits for it)
    if not fut.done():
        raise RuntimeError("await wasn't used with future")
    return fut.result()  # (raises as the future's own __await__ would)


class ResponseHead:
    """A response head ``parse_head`` read as h11 reads it, framed by one Content-Length.
    ``known``, ``values``: for a head ``parse_known`` read, the ``_Known`` of its names and
    its values (the pattern's groups, in the fields' order); None for ``parse_head``'s."""

    __slots__ = ("end", "headers", "keep_alive", "known", "length", "reason", "status",
                 "values")

    def __init__(self, status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]],
                 length: int, keep_alive: bool, end: int) -> None:
        # (a list from ``parse_head``, a tuple from ``parse_known``)
        self.status, self.reason, self.headers = status, reason, headers
        self.length, self.keep_alive, self.end = length, keep_alive, end
        self.known: _Known | None = None
        self.values: tuple[bytes, ...] | None = None


#: The ``flow.metadata`` key under which the pool stage hands the response gate the
#: ``ResponseHead`` its response was made from (stages/pool.py, stages/response_gate.py):
#: it tells about the response only while ``flow.response.headers.fields`` is that head's
#: very ``headers`` tuple (``parse_known``'s; a stage that sets a field makes a new one).
UPSTREAM_HEAD = "vaultproxy.uphead"


def parse_head(data: bytes, method: bytes) -> ResponseHead | None:
    """The response head at the start of ``data``, exactly as h11 reads it, when it is an
    HTTP/1.1 final response (200-599 but 204 and 304) to a request other than HEAD, with
    one ``Content-Length`` (digits) and no ``Transfer-Encoding``, whole within ``data`` in
    h11's grammar (``status_line``, ``header_field``) with CRLF line ends only. None for
    anything else (1xx, 101, chunked, close-delimited, bare LF, obs-fold, duplicates, a
    head not yet whole...): h11 reads it.

    Two regular expressions in C rather than line by line: the status line
    (``_STATUS_LINE``), then every field line (``_FIELD_LINE``): the head is taken only
    when that matched every line, which a count of CRLFs tells (tests/unit/
    test_speed_h1fields.py keeps the reader before them as a reference). What the names
    alone tell is read once per set of names (``_HEAD_SHAPES``; test_speed_h1fields.py
    keeps the reading of the lower-cased block before it as a reference)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_INCOMPLETE_EVENT or method == b"HEAD":
        return None
    if data.startswith(_OK_LINE):  # (what ``_STATUS_LINE`` reads of it)
        status, reason, line_end = 200, b"OK", len(_OK_LINE)
    else:
        line = _status_of(data)
        if line is None:
            return None
        status, reason, line_end = line
    # the field lines: each a token, ":", a value (its OWS stripped, as h11 does)
    block = data[line_end - 2:end + 2]  # (from the status line's CRLF)
    headers: list[tuple[bytes, bytes]] = _FIELD_LINE.findall(block)
    if len(headers) != block.count(b"\r\n") - 1:
        return None  # a line that is no field (no colon, no token, obs-fold, bare CR/LF...)
    if block.find(b" \r\n") >= 0 or block.find(b"\t\r\n") >= 0:  # trailing whitespace
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    # what the names tell (one Content-Length, no Transfer-Encoding, which are Connection
    # fields): read once per set of names
    names = tuple(map(_NAME, headers))
    try:
        shape = _HEAD_SHAPES[names]
    except KeyError:
        shape = _head_shape(names)
        if len(names) <= _HEAD_NAMES_MAX and sum(map(len, names)) <= _HEAD_NAME_BYTES_MAX:
            if len(_HEAD_SHAPES) >= _HEAD_SHAPES_MAX:
                _HEAD_SHAPES.clear()
            _HEAD_SHAPES[names] = shape
    if shape is None:
        return None  # no Content-Length or two, or a Transfer-Encoding
    length = headers[shape[0]][1]
    if not length.isdigit() or len(length) > 18:
        return None
    keep_alive = True
    for i in shape[1]:
        value = headers[i][1].lower()
        if value.find(b"close") >= 0 and b"close" in [t.strip() for t in value.split(b",")]:
            keep_alive = False
    # (``ResponseHead(status, reason, headers, int(length), keep_alive, end + 4)``, its
    # ``__init__`` inline: a call less per response)
    head = ResponseHead.__new__(ResponseHead)
    head.status, head.reason, head.headers = status, reason, headers
    head.length, head.keep_alive, head.end = int(length), keep_alive, end + 4
    head.known = head.values = None
    return head


# A head whose field names are those of earlier heads (the same names, in the same order,
# as sent: an upstream answers the same way again and again) is read by one pattern made
# for those names (``_Known``): one match from the status line's CRLF to the blank line,
# the values its groups, the names and what they tell (``_head_shape``) those of the
# earlier heads, where ``parse_head`` finds every line, makes every name and looks the set
# up. It takes a head only as ``parse_head`` reads it: each line the known name, ":", the
# value in ``_FIELD_LINE``'s class (its leading spaces and tabs dropped, as there), a CRLF;
# a value ending in a space or tab (``parse_head`` strips it) is not taken
# (``(?<![ \t])``), nor anything else: ``parse_head`` reads it
# (tests/unit/test_speed_h1known.py compares the two).
# A pattern is made for a set of names the second time ``parse_head`` read it (one read alone
# compiles nothing); names only, never a value; at most ``_KNOWN_MAX`` sets, each within
# ``_HEAD_NAMES_MAX`` names and ``_HEAD_NAME_BYTES_MAX`` bytes of names. Making one costs
# ~4.6M instructions for 8 names, ~37M for 64 (``re``'s compiler, in Python): at most
# ``_KNOWN_BUDGET`` are made per ``_KNOWN_WINDOW`` seconds, so an upstream that changes its
# names all the time costs a bounded share of a core (past it: ``parse_head``, as before).
# (The value's class as ``_FIELD_LINE``'s, its two ranges the other way round: ``re`` keeps
# a class of two ranges as written, and tests a byte against them in that order, so a value
# byte, nearly always in 0x0e-0xff, is found by the first test: ~1.6k instructions less per
# head of 8 fields; tests/unit/test_speed_pool11.py compares the patterns.)
_KNOWN_VALUE = rb":[ \t]*+([\x0e-\xff\x01-\x09]*+)(?<![ \t])"
# The Content-Length field's value: what ``parse_head`` takes of it (after the leading spaces
# and tabs, ASCII digits, at most 18, then the CRLF: ``isdigit`` and the length test), in
# the pattern; any other value fails the match and ``parse_head`` reads (declines) the head.
_KNOWN_LENGTH = rb":[ \t]*+([0-9]{1,18})"
# The most common status line (``_OK_LINE`` without its CRLF, which the pattern's first
# field line begins with), folded into a second pattern tried first (``_Known.ok``).
_KNOWN_OK = re.escape(_OK_LINE[:-2])
_KNOWN_MAX = 64
_KNOWN_BUDGET = 16
_KNOWN_WINDOW = 10.0


class _Known:
    """The pattern of one set of field names, and what those names tell."""

    __slots__ = ("connection", "gate", "length", "match", "names", "ok")

    def __init__(self, names: tuple[bytes, ...], shape: tuple[int, tuple[int, ...]]) -> None:
        self.names = names
        # What the response gate reads of these names (stages/response_gate.py
        # ``_known_gate``, names only), filled by the gate the first time it sees them
        # (None until then).
        self.gate: Any = None
        self.length, self.connection = shape
        fields = b"".join([
            rb"\r\n" + re.escape(name) + (_KNOWN_LENGTH if i == self.length else _KNOWN_VALUE)
            for i, name in enumerate(names)]) + rb"\r\n\r\n"
        match = re.compile(fields)
        ok = re.compile(_KNOWN_OK + fields)
        # one group per name, in the names' order (``parse_known`` pairs them unchecked)
        if match.groups != len(names) or ok.groups != len(names):
            raise ValueError("a field name's pattern holds a group")
        self.match = match.match  # (from the status line's CRLF)
        self.ok = ok.match  # (the status line "200 OK" and all)


# names -> their ``_Known``, bounded (net/namesets.py)
_SETS: NameSets[_Known] = NameSets(max_sets=_KNOWN_MAX, max_names=_HEAD_NAMES_MAX,
                                   max_name_bytes=_HEAD_NAME_BYTES_MAX, budget=_KNOWN_BUDGET,
                                   window=_KNOWN_WINDOW)
_KNOWN, _known_made = _SETS.table, _SETS.made


def known_of(headers: Sequence[tuple[bytes, bytes]]) -> _Known | None:
    """The pattern for the names of a head ``parse_head`` read (None: none yet, or none to
    be made: a set seen once, too many names, no single Content-Length...)."""
    return _SETS.of(tuple(map(_NAME, headers)), _known_for)


def _known_for(names: tuple[bytes, ...]) -> _Known | None:
    shape = _head_shape(names)
    return None if shape is None else _Known(names, shape)


def parse_known(data: bytes, method: bytes, known: _Known) -> ResponseHead | None:
    """``parse_head(data, method)`` when the head's field names are ``known.names``, each
    value without trailing spaces or tabs; None for anything else (``parse_head`` reads it).
    The status line and the values' reading are ``parse_head``'s statements, but for the
    status line "200 OK" and the Content-Length's digits, read by the pattern (``ok``,
    ``_KNOWN_LENGTH``); the fields a tuple (``headers_made`` takes it as it is)."""
    if method == b"HEAD":
        return None
    fields = known.ok(data)  # (``_OK_LINE`` and the fields: what ``_STATUS_LINE`` reads of it)
    if fields is not None:
        status, reason = 200, b"OK"
    else:
        line = _status_of(data)
        if line is None:
            return None
        status, reason, line_end = line
        # (no CR or LF in a line, no line without a name: the blank line is the first
        # CRLFCRLF, ``parse_head``'s ``end``)
        fields = known.match(data, line_end - 2)
        if fields is None:
            return None
    end = fields.end()
    if end > MAX_INCOMPLETE_EVENT + 4:
        return None
    values = fields.groups()
    keep_alive = True
    for i in known.connection:
        value = values[i]
        if value != b"keep-alive":  # (the usual value: no "close" in it, whatever its case)
            value = value.lower()
            if value.find(b"close") >= 0 and b"close" in [t.strip() for t in value.split(b",")]:
                keep_alive = False
    head = ResponseHead.__new__(ResponseHead)
    head.status, head.reason = status, reason
    # (a tuple: ``headers_made``'s ``tuple()`` returns it as it is; one pair per group, as
    # many groups as names (``_Known``): ``zip`` without ``strict``, its check per call)
    head.headers = tuple(zip(known.names, values))  # noqa: B905 - as many as names
    head.length, head.keep_alive, head.end = int(values[known.length]), keep_alive, end
    head.known, head.values = known, values  # (for the response gate: ``UPSTREAM_HEAD``)
    return head


class WantsHTTP2(Exception):
    """The upstream chose HTTP/2 in the TLS handshake: not for this client. ``stream`` is
    that connection (verified, nothing sent on it) for httpcore's HTTP/2 connection
    (``outbound.adopt``), so the dial is not wasted; the receiver closes it if unused."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        super().__init__("the upstream chose HTTP/2")
        self.stream = stream


class _Conn(asyncio.Protocol):
    """One upstream connection: the transport's bytes into h11, one exchange at a time."""

    def __init__(self, where: tuple[str, int, str]) -> None:
        self.where = where
        self.transport: Any = None
        self.sock: Any = None
        # h11 reads this exchange's response (None: the fast path, ``parse_head``, does)
        self.h11: h11.Connection | None = None
        self.method = b""
        self.state: list[tuple[bytes, bytes]] = []  # the fields h11 needs of the request
        self.keep = False  # the fast path's exchange may leave the connection open
        self.left = 0  # the fast path's body bytes still to come
        self.trailing = False  # bytes came after the fast path's response
        self.known: _Known | None = None  # the pattern of the last fast head's names
        self.inbox: list[bytes] = []
        self.inbox_len = 0
        self.paused = False
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None
        # the read timer: one per connection, set again only when a wait's deadline comes
        # before the one it is set for, or when it fires before the waiting read's deadline
        self.loop = asyncio.get_running_loop()
        self.deadline: float | None = None  # the waiting read's (None: none, or no limit)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when ``timer`` fires (the loop's clock)
        self.scan = HeadScan()
        self.busy = False
        self.unasked = False  # bytes came while idle
        self.expire_at = 0.0
        self.sessions: Any = None
        self.ticket_reads = 0
        self.closed = False
        self.gone: asyncio.Future[None] = self.loop.create_future()

    # -- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = self.sock = transport.get_extra_info("socket")
        if sock is not None and type(transport) is not _TLSSocket:  # (dial_tls set it)
            try:  # (asyncio and uvloop set it already; it is the point of a small write)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.unasked = True
        self.inbox.append(data)
        self.inbox_len += len(data)
        if self.inbox_len > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        waiter = self.waiter  # (``_wake()``, inline: once per response)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closed = True
        if not self.gone.done():
            self.gone.set_result(None)
        self._wake()
        if self.timer is not None:  # (no read waits on a closed connection: ``eof``)
            self.timer.cancel()
            self.timer = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the exchange

    def reusable(self) -> bool:
        """Neither closed (by us, the upstream or a failure) nor holding bytes nobody asked
        for. (``_TLSSocket.is_closing()`` read as its flag: a call less, four times per
        exchange; any other transport is asked.)"""
        if self.closed or self.eof or self.unasked or self.inbox:
            return False
        transport = self.transport
        if type(transport) is _TLSSocket:
            return not transport._closing
        return not transport.is_closing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def keep_session(self) -> None:
        if self.sessions is None:
            return
        self.ticket_reads += 1
        obj = self.transport.get_extra_info("ssl_object")
        if obj is None or self.sessions.keep(self.where[2], obj) or (
                self.ticket_reads > _TICKET_READS):
            self.sessions = None

    def send(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes, checked: bool = False) -> None:
        """``checked``: the caller found ``reusable()`` true in this same synchronous step
        (``H1Pool.exchange``, a connection ``_take_now`` returned), so nothing ran since
        that could have changed its answer: not asked again."""
        if self.busy:  # one exchange at a time: never a request while one is in flight
            raise httpcore.LocalProtocolError("a request is already in flight")
        if not checked and not self.reusable():
            raise httpcore.WriteError("the upstream closed the connection")
        self.busy = True
        fast = request_bytes(method, target, headers, body)
        try:
            if fast is not None:
                data: bytes | None = fast[0]
                self.state = fast[1]
                self.h11 = None
                self.method = method
                self.keep = len(fast[1]) == 1 or b"close" not in [  # (1: Host alone)
                    t.strip().lower() for k, v in fast[1] if k == b"connection"
                    for t in v.split(b",")]
            else:
                conn = self.h11 = h11.Connection(
                    h11.CLIENT, max_incomplete_event_size=MAX_INCOMPLETE_EVENT)
                data = conn.send(h11.Request(method=method, target=target, headers=headers))
                if body:
                    data += conn.send(h11.Data(data=body))  # type: ignore[operator]
                data += conn.send(h11.EndOfMessage())  # type: ignore[operator]
                self.scan.start()
        except h11.LocalProtocolError as e:
            self.close()
            raise httpcore.LocalProtocolError(str(e)) from None
        assert data is not None
        self.transport.write(data)

    @types.coroutine
    def read_head(self, timeout: float) -> Generator[Any, None, ResponseHead | None]:
        """The fast path's response head, from the first bytes that come (``parse_known``
        with the pattern of this connection's last head's names, else ``parse_head``);
        None when h11 is to read this response (it then has the request's state and
        every byte read so far, and the scan of the head runs as on h11's own path).

        A generator (``types.coroutine``) with ``wait`` (its one read timer per connection
        included) and ``_done`` inline: the exchange's one suspension resumes two frames
        fewer (tests/unit/test_speed_h1wait.py)."""
        if not self.inbox and not self.eof:
            # (``waiter = self._arm(timeout)``, inline: a call less per response; the same
            # statements, ``timeout`` never None here)
            loop = self.loop
            waiter = self.waiter = loop.create_future()
            if timeout is not None:
                deadline = self.deadline = loop.time() + timeout
                timer = self.timer
                if timer is None or self.timer_at > deadline:
                    if timer is not None:
                        timer.cancel()
                    self.timer_at = deadline
                    self.timer = loop.call_at(deadline, self._timer_fired)
            try:
                try:
                    if not waiter.done():
                        waiter._asyncio_future_blocking = True
                        yield waiter  # (the task waits for it)
                    if not waiter.done():
                        raise RuntimeError("await wasn't used with future")
                    waiter.result()  # (raises as the future's own __await__ would)
                finally:
                    self.waiter = None
                    self.deadline = None
            except TimeoutError:
                self.close()
                raise httpcore.ReadTimeout("the upstream did not answer in time") from None
        inbox = self.inbox
        if inbox:  # (``self.take()``, inline)
            data = b"".join(inbox) if len(inbox) > 1 else inbox[0]
            inbox.clear()
            self.inbox_len = 0
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
        else:
            data = b""
        known = self.known  # (the pattern of this connection's last head's names)
        head = parse_known(data, self.method, known) if known is not None and data else None
        if head is None:
            head = parse_head(data, self.method) if data else None
            if head is not None:
                self.known = known_of(head.headers)
        if head is None:
            conn = self.h11 = h11.Connection(
                h11.CLIENT, max_incomplete_event_size=MAX_INCOMPLETE_EVENT)
            conn.send(h11.Request(method=self.method, target=b"/", headers=self.state,
                                  _parsed=True))
            conn.send(h11.EndOfMessage())
            self.scan.start()
            if data:
                self.inbox.insert(0, data)
                self.inbox_len += len(data)
            return None
        # (``head_seen`` is not set for a head read here: the pool stage reads it only on
        # h11's path and when ``exchange`` raised, which it never does once this returned a
        # head; tests/unit/test_speed_pool11.py)
        if self.sessions is not None:
            self.keep_session()
        # bytes after the body (a second response nobody asked for): never read, and the
        # connection is closed after this response
        self.trailing = len(data) - head.end > head.length
        body = data[head.end:head.end + head.length]
        if body:
            self.inbox.append(body)
            self.inbox_len += len(body)
        self.left = head.length
        self.keep = self.keep and head.keep_alive
        return head

    async def body_chunk(self, timeout: float) -> bytes | None:
        """The fast path's next body bytes; None at the end of the body."""
        try:
            while self.left:
                if self.inbox:
                    data = self.take()
                    if self.sessions is not None:
                        self.keep_session()
                    if len(data) > self.left:
                        self.trailing = True
                        data = data[:self.left]
                    self.left -= len(data)
                    return data
                if self.eof:
                    raise httpcore.RemoteProtocolError(
                        "peer closed connection without sending complete message body")
                await self.wait(timeout)
            return None
        except TimeoutError:
            self.close()
            raise httpcore.ReadTimeout("the upstream did not answer in time") from None
        except BaseException:
            self.close()
            raise

    @types.coroutine
    def wait(self, timeout: float | None) -> Generator[Any, None, None]:
        """``await conn.wait(timeout)``: until bytes or the end came (TimeoutError after
        ``timeout`` seconds).

        A generator with ``_done(waiter)``'s body inline: one object and one frame per
        wait, not a coroutine and a generator.

        The timeout as ``loop.call_later(timeout, _expire, waiter)`` set per wait and
        cancelled after it would, without a timer per wait: the connection's one timer is
        set for this wait's deadline only when it is not already set for that or an
        earlier moment; one that fires before the deadline is set again for it
        (``_timer_fired``). tests/unit/test_hops.py compares the two."""
        if not self.inbox and not self.eof:
            waiter = self._arm(timeout)
            try:
                # (``_done(waiter)``)
                if not waiter.done():
                    waiter._asyncio_future_blocking = True
                    yield waiter  # (the task waits for it)
                if not waiter.done():
                    raise RuntimeError("await wasn't used with future")
                waiter.result()  # (raises as the future's own __await__ would)
            finally:
                self.waiter = None
                self.deadline = None

    def _arm(self, timeout: float | None) -> asyncio.Future[None]:
        """The waiting read's future, and its deadline on the connection's one read timer:
        the timer is set for it only when it is not already set for that or an earlier
        moment (``_timer_fired`` sets it again for a later one). (``read_head`` holds a
        copy of these statements: keep the two alike.)"""
        loop = self.loop
        waiter = self.waiter = loop.create_future()
        if timeout is not None:
            deadline = self.deadline = loop.time() + timeout
            timer = self.timer
            if timer is None or self.timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer_at = deadline
                self.timer = loop.call_at(deadline, self._timer_fired)
        return waiter

    def _timer_fired(self) -> None:
        """The read timer: the waiting read's deadline has come (``TimeoutError``), or
        that read's deadline is later than the moment the timer was set for (a read
        before it set it): set it again for that deadline. No read waits: nothing."""
        self.timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or deadline is None:
            return
        if deadline <= self.timer_at:
            _expire(waiter)
        else:
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._timer_fired)

    def take(self) -> bytes:
        """Every byte received and not yet taken (b"": none)."""
        if not self.inbox:
            return b""
        data = b"".join(self.inbox) if len(self.inbox) > 1 else self.inbox[0]
        self.inbox.clear()
        self.inbox_len = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def _fill(self, timeout: float) -> None:
        """The next bytes into h11 (b"" at the end), waiting at most ``timeout``."""
        await self.wait(timeout)
        if self.inbox:
            data = self.take()
            if self.scan.active:
                self.scan.feed(data)
            if self.sessions is not None:
                self.keep_session()
            assert self.h11 is not None
            self.h11.receive_data(data)
        elif self.eof:
            assert self.h11 is not None
            self.h11.receive_data(b"")

    async def next_event(self, timeout: float) -> Any:
        assert self.h11 is not None
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    await self._fill(timeout)
                    continue
                return event
        except h11.RemoteProtocolError as e:
            self.close()
            raise httpcore.RemoteProtocolError(str(e)) from None
        except TimeoutError:
            self.close()
            raise httpcore.ReadTimeout("the upstream did not answer in time") from None
        except BaseException:
            self.close()
            raise


_READ_SIZE = 65536  # one TLS record is at most 16 KiB of plaintext; one read returns one


class _TLSSocket:
    """The transport ``_Conn`` reads and writes through, on a non-blocking ``ssl.SSLSocket``
    driven by the loop's ``add_reader``/``add_writer``: OpenSSL reads and writes the socket
    itself (``SSL_read``/``SSL_write``, in C), where the loop's TLS transport (asyncio's
    sslproto, uvloop's) moves every record through memory BIOs and its own Python or Cython
    state machine. The handshake (``dial_tls``) is the same OpenSSL handshake under the
    same context: certificate and host name verified, SNI, ALPN, the session resumed.

    What the loop's transport does and this keeps: ``data_received`` with each read's
    plaintext, ``eof_received`` then ``connection_lost`` at the end (a close_notify or a
    bare FIN alike, as the loop's transport takes both), a write the socket cannot take at
    once kept whole and sent as the socket drains (OpenSSL wants the same bytes again after
    a blocked ``SSL_write``), ``pause_reading``/``resume_reading``, and ``close`` sending
    close_notify (which also keeps the session resumable) before the socket closes. A
    read that needs a write (a TLS 1.2 renegotiation, a TLS 1.3 key update) waits for the
    socket to be writable, and a write that needs a read for it to be readable."""

    __slots__ = ("_buffer", "_closing", "_fd", "_loop", "_obj", "_pending", "_poll",
                 "_protocol", "_reading", "_read_wants_write", "_sock", "_write_wants_read",
                 "_writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                 protocol: _Conn) -> None:
        self._loop = loop
        self._sock = sock
        self._obj: Any = sock._sslobj  # type: ignore[attr-defined]  # (the C object)
        self._fd = sock.fileno()
        self._protocol = protocol
        self._pending: bytes | None = None  # the write OpenSSL wants again, whole
        self._buffer: deque[bytes] = deque()  # writes after it
        self._closing = False
        self._reading = True
        self._writing = False  # add_writer is on
        self._read_wants_write = False
        self._write_wants_read = False
        self._poll = select.poll()  # (no descriptor of its own: a list of one fd)
        self._poll.register(self._fd, select.POLLIN)
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._on_readable)

    # -- what _Conn and HandedStream ask

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("ssl_object", "socket"):
            return self._sock
        if name == "sslcontext":
            return self._sock.context
        if name in ("peername", "sockname"):
            try:
                return (self._sock.getpeername() if name == "peername"
                        else self._sock.getsockname())
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._write_wants_read:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            if not self._write_wants_read:
                self._loop.add_reader(self._fd, self._on_readable)
            if self._obj.pending():  # (already decrypted: the socket will not say so)
                self._loop.call_soon(self._read)

    def readable_now(self) -> None:
        """Read what the socket holds right now, if anything (the end, a TLS 1.3 ticket,
        bytes nobody asked for), before the loop would: one ``poll`` of this socket."""
        if self._reading and not self._closing and self._poll.poll(0):
            self._read()

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if self._pending is not None:
            self._buffer.append(data)
            return
        try:  # (``_send(data)``, inline)
            n = self._obj.write(data)
        except OSError as e:  # (ssl.SSLError is one)
            self._unsent(data, e)
            return
        if n < len(data):
            self._pending = data[n:] if n else data
            self._writer(True)

    def close(self) -> None:
        """close_notify (best effort: a full socket buffer or a peer already gone skips
        it), then the socket; ``connection_lost`` on the next loop turn."""
        if self._closing:
            return
        if self._pending is not None:
            self._flush()  # (once: what the socket cannot take now is dropped)
            if self._closing:
                return
        self._stop()
        try:
            self._obj.shutdown()
        except (ssl.SSLError, OSError, ValueError):
            pass
        self._gone(None)

    def abort(self) -> None:
        if not self._closing:
            self._stop()
            self._gone(None)

    # -- the loop's callbacks

    def _on_readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            if not self._reading:
                self._loop.remove_reader(self._fd)
            self._flush()
        if not self._reading or self._closing:
            return
        # (``self._read()``, inline: a call less per response; the same loop)
        obj = self._obj
        protocol = self._protocol
        while True:
            try:
                data = obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._writer(True)
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            except (ssl.SSLError, OSError) as e:
                self._fail(e)
                return
            if not data:
                self._eof()
                return
            protocol.data_received(data)
            if not (self._reading and not self._closing and obj.pending()):
                return

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if self._pending is None:
                self._writer(False)
            if self._reading and not self._closing:
                self._read()
        if self._pending is not None and not self._closing:
            self._flush()

    # -- the bytes

    def _read(self) -> None:
        # (``_on_readable`` holds a copy of this loop: keep the two alike)
        obj = self._obj
        protocol = self._protocol
        while True:
            try:
                data = obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._writer(True)
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            except (ssl.SSLError, OSError) as e:
                self._fail(e)
                return
            if not data:
                self._eof()
                return
            protocol.data_received(data)
            if not (self._reading and not self._closing and obj.pending()):
                return

    def _send(self, data: bytes) -> None:
        """Write ``data`` now, or keep it (whole: OpenSSL wants the same bytes again) for
        when the socket can take it. (``write`` holds a copy of this: a call less per
        request.)"""
        try:
            n = self._obj.write(data)
        except OSError as e:  # (ssl.SSLError is one)
            self._unsent(data, e)
            return
        if n < len(data):
            self._pending = data[n:] if n else data
            self._writer(True)

    def _unsent(self, data: bytes, e: OSError) -> None:
        """What ``_send`` does when ``SSL_write`` raised ``e`` for ``data``."""
        if isinstance(e, ssl.SSLWantWriteError):  # (nothing written: all of it waits)
            self._pending = data
            self._writer(True)
        elif isinstance(e, ssl.SSLWantReadError):
            self._pending = data
            self._write_wants_read = True
            if not self._reading:
                self._loop.add_reader(self._fd, self._on_readable)
        else:
            self._fail(e)

    def _flush(self) -> None:
        while self._pending is not None and not self._closing:
            data, self._pending = self._pending, None
            self._send(data)
            if self._pending is not None or self._closing:
                return
            if self._buffer:
                data = self._buffer.popleft()
                while self._buffer and len(data) < _READ_SIZE:
                    data += self._buffer.popleft()
                self._pending = data
        if not self._read_wants_write:
            self._writer(False)

    def _writer(self, on: bool) -> None:
        if on and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
        elif not on and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    # -- the end

    def _eof(self) -> None:
        self._protocol.eof_received()
        self.close()

    def _fail(self, exc: Exception) -> None:
        if not self._closing:
            self._stop()
            self._gone(exc)

    def _stop(self) -> None:
        self._closing = True
        self._pending = None
        self._buffer.clear()
        loop = self._loop
        loop.remove_reader(self._fd)
        if self._writing:
            self._writing = False
            loop.remove_writer(self._fd)

    def _gone(self, exc: Exception | None) -> None:
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Until ``fd`` is readable (writable: ``write``)."""
    done = loop.create_future()
    add, remove = ((loop.add_writer, loop.remove_writer) if write
                   else (loop.add_reader, loop.remove_reader))

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    add(fd, ready)
    try:
        await done
    finally:
        remove(fd)


async def dial_tls(ssl_context: ssl.SSLContext, ip: str, port: int, sni: str,
                   session: ssl.SSLSession | None) -> ssl.SSLSocket:
    """A TCP connection to ``ip`` (an IP literal), TCP_NODELAY, then the TLS handshake for
    ``sni`` under ``ssl_context`` (its verification, its ALPN), resuming ``session``: the
    socket ``_TLSSocket`` drives. The caller bounds the time."""
    loop = asyncio.get_running_loop()
    addr = ipaddress.ip_address(ip)
    raw = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
                        socket.SOCK_STREAM)
    try:
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(raw, (ip, port))
        sock = ssl_context.wrap_socket(raw, server_hostname=sni,
                                       do_handshake_on_connect=False, session=session)
    except BaseException:
        raw.close()
        raise
    try:
        while True:
            try:
                sock.do_handshake()
                return sock
            except ssl.SSLWantReadError:
                await _ready(loop, sock.fileno(), False)
            except ssl.SSLWantWriteError:
                await _ready(loop, sock.fileno(), True)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break
    except BaseException:
        sock.close()
        raise
    # the end mid-handshake: what the loop's transport raises for it, with no TLS error
    # behind it (the stage words it "could not connect", not as a certificate failure)
    sock.close()
    raise ConnectionResetError("the upstream closed during the TLS handshake")


def _own_socket(loop: asyncio.AbstractEventLoop, host: str) -> bool:
    """Can ``_TLSSocket`` carry a connection to ``host`` on ``loop``: an IP literal (the
    caller's checked address; anything else the loop resolves) on a loop with readers."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return hasattr(loop, "add_reader") and not isinstance(
        loop, getattr(asyncio, "ProactorEventLoop", ()))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class HandedStream(httpcore.AsyncNetworkStream):
    """A connection of this client as httpcore's network stream: an upstream that chose
    HTTP/2 is handed, dialled and verified, to httpcore's HTTP/2 connection."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        conn = self._conn
        try:
            await conn.wait(timeout)
        except TimeoutError:
            raise httpcore.ReadTimeout("the upstream did not answer in time") from None
        data = conn.take()
        if len(data) > max_bytes:
            conn.inbox.insert(0, data[max_bytes:])
            conn.inbox_len += len(data) - max_bytes
            data = data[:max_bytes]
        if data and conn.sessions is not None:
            conn.keep_session()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        conn = self._conn
        if conn.closed or conn.transport.is_closing():
            raise httpcore.WriteError("the upstream closed the connection")
        conn.transport.write(buffer)

    async def aclose(self) -> None:
        self._conn.close()

    @property
    def gone(self) -> asyncio.Future[None]:
        """Done once the socket is closed (after the TLS shutdown ``aclose`` started)."""
        return self._conn.gone

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("already TLS")

    def get_extra_info(self, info: str) -> Any:
        conn = self._conn
        if info == "is_readable":
            # drop_closed's question: only the end counts. The loop reads eagerly, so HTTP/2
            # frames that came while the connection looked idle (the server's SETTINGS
            # preface, a late WINDOW_UPDATE) wait here; closing on them raced a request
            # httpcore had just assigned to it. A GOAWAY without the end still answers the
            # next request with ConnectionTerminated, which the stage resends.
            return conn.eof
        return conn.transport.get_extra_info(info)


class H1Response:
    """The parts of ``httpcore.Response`` the stage reads, and the body chunk by chunk.

    Slotted; ``extensions`` (httpcore's ``http_version`` and ``reason_phrase``) is made
    from ``version`` and ``reason`` when read, not per response: the stage's path for a
    head ``parse_head`` read takes ``reason`` itself, and nobody writes ``extensions``."""

    __slots__ = ("status", "headers", "version", "reason", "_pool", "_conn", "_timeout",
                 "length", "head")

    def __init__(self, pool: H1Pool, conn: _Conn, status: int,
                 headers: Sequence[tuple[bytes, bytes]], version: bytes, reason: bytes,
                 read_timeout: float) -> None:
        self.status = status
        self.headers = headers
        self.version = b"HTTP/" + version  # (``extensions["http_version"]``)
        self.reason = reason  # (``extensions["reason_phrase"]``)
        self._pool = pool
        self._conn: _Conn | None = conn
        self._timeout = read_timeout
        self.length: int | None = None  # the Content-Length of a head ``parse_head`` read
        self.head: ResponseHead | None = None  # that head (``parse_head``'s or ``parse_known``'s)

    @property
    def extensions(self) -> dict[str, bytes]:
        """httpcore's ``Response.extensions`` as far as the stage reads it (a new dict)."""
        return {"http_version": self.version, "reason_phrase": self.reason}

    async def next_chunk(self, idle: float) -> bytes | None:
        """The next non-empty body chunk, waiting at most ``idle`` (and the read timeout)
        for it; None at the end, when the connection goes back to the pool."""
        conn = self._conn
        if conn is None:
            return None
        timeout = min(idle, self._timeout)
        if conn.h11 is None:
            chunk = await conn.body_chunk(timeout)
            if chunk is None:
                self._conn = None
                self._pool.release(conn)
            return chunk
        while True:
            event = await conn.next_event(timeout)
            if type(event) is h11.Data:
                if event.data:
                    return bytes(event.data)
                continue
            if type(event) is h11.EndOfMessage:
                self._conn = None
                self._pool.release(conn)
                return None
            conn.close()  # (h11 yields nothing else here)
            raise httpcore.RemoteProtocolError("unexpected event in a response body")

    def body_now(self) -> bytes | None:
        """The whole body when the fast path already holds every byte of it (what
        ``next_chunk`` would return, joined, its end included: the connection goes back to
        the pool), without a coroutine per chunk; None (nothing taken) otherwise."""
        conn = self._conn
        if conn is None or conn.h11 is not None or conn.inbox_len < conn.left:
            return None
        data = b""
        if conn.left:
            inbox = conn.inbox  # (``conn.take()``, inline: ``left`` bytes are in it)
            data = b"".join(inbox) if len(inbox) > 1 else inbox[0]
            inbox.clear()
            conn.inbox_len = 0
            if conn.paused:
                conn.paused = False
                conn.transport.resume_reading()
            if conn.sessions is not None:
                conn.keep_session()
            if len(data) > conn.left:
                conn.trailing = True
                data = data[:conn.left]
            conn.left = 0
        self._conn = None
        self._pool.release(conn)
        return data

    async def aiter_stream(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk(self._timeout)) is not None:
            yield chunk

    async def aclose(self) -> None:
        """The exchange ends: a body not read to its end closes the connection. One with
        none to read (HEAD, 204, 304: its end came with the head) goes back to the pool."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.h11 is None:
            if conn.left:
                conn.close()
            else:
                self._pool.release(conn)
            return
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            event = None
        if type(event) is h11.EndOfMessage:
            self._pool.release(conn)
        else:
            conn.close()


class H1Pool:
    """The idle HTTP/1.1 connections of one service's pool (see the module docstring)."""

    def __init__(self, ssl_context: ssl.SSLContext, idle: float,
                 transport: str = "socket") -> None:
        # "socket": connections on ``_TLSSocket`` (OpenSSL on the socket); "loop": on the
        # loop's TLS transport (loop.create_connection), also what "socket" falls back to
        # for a host that is not an IP literal or a loop without add_reader
        if transport not in ("socket", "loop"):
            raise ValueError(f"transport must be 'socket' or 'loop', not {transport!r}")
        self._transport = transport
        self._ssl = ssl_context
        self._sessions = sessions_of(ssl_context)
        self._idle_for = idle
        self._idle: dict[tuple[str, int, str], deque[_Conn]] = {}
        self.closed = False
        self.dials = 0  # connections this pool opened (stats, tests)
        self._open: set[_Conn] = set()  # of those, not gone yet (idle, in use, handed on)
        self.on_dial: Callable[[], None] | None = None  # after each new connection

    async def _dial(self, where: tuple[str, int, str], timeout: float) -> _Conn:
        ip, port, sni = where
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                if self._transport == "socket" and _own_socket(loop, ip):
                    sock = await dial_tls(self._ssl, ip, port, sni, self._sessions.get(sni)
                                          if self._sessions is not None else None)
                    conn = _Conn(where)
                    _TLSSocket(loop, sock, conn)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Conn(where), host=ip, port=port, ssl=self._ssl,
                        server_hostname=sni, ssl_handshake_timeout=timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise httpcore.ConnectError(type(e).__name__) from e
        self.dials += 1
        stats["dials"] += 1
        self._open.add(conn)
        conn.gone.add_done_callback(lambda _: self._open.discard(conn))
        if self.on_dial is not None:
            self.on_dial()
        conn.sessions = self._sessions
        conn.keep_session()
        obj = conn.transport.get_extra_info("ssl_object")
        if obj is not None and obj.selected_alpn_protocol() == "h2":
            conn.busy = True  # (bytes from now on are HTTP/2's, read by httpcore)
            raise WantsHTTP2(HandedStream(conn))
        return conn

    def _take_now(self, where: tuple[str, int, str]) -> _Conn | None | Literal[False]:
        """``_take`` without a coroutine while the idle connections are on ``_TLSSocket``
        (their look is one ``poll``, never a loop turn): the same connection kept, the
        same ones closed. False when the next one is on another transport: ``_take``
        goes on from there."""
        stack = self._idle.get(where)
        now = time.monotonic()
        while stack:
            conn = stack[-1]  # the most recent: the likeliest still open upstream
            transport = conn.transport
            if type(transport) is not _TLSSocket:
                return False
            stack.pop()
            # (``conn.reusable()``, inline for ``_TLSSocket``: a call less per request)
            if (not (conn.closed or conn.eof or conn.unasked or conn.inbox
                     or transport._closing) and conn.expire_at > now):
                # (``readable_now()``, inline) the end, or bytes, read at once; when the
                # socket holds nothing, nothing was read: nothing to look at again
                if not (transport._reading and transport._poll.poll(0)):
                    return conn
                transport._read()
                if conn.reusable():
                    return conn
            conn.close()
        return None

    async def _take(self, where: tuple[str, int, str]) -> _Conn | None:
        stack = self._idle.get(where)
        now = time.monotonic()
        while stack:
            conn = stack.pop()  # the most recent: the likeliest still open upstream
            if conn.reusable() and conn.expire_at > now:
                transport = conn.transport
                if type(transport) is _TLSSocket:
                    # (``readable_now()``, inline) the end, or bytes, read at once; when
                    # the socket holds nothing, nothing was read: nothing to look at again
                    if not (transport._reading and transport._poll.poll(0)):
                        return conn
                    transport._read()
                elif readable(conn.sock):
                    # Bytes the loop has not read yet: a FIN just in, or (harmless) a TLS
                    # 1.3 session ticket. Two loop turns: the selector, then its read.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                if conn.reusable():
                    return conn
            conn.close()
        return None

    async def exchange(self, ip: str, port: int, sni: str, method: bytes, target: bytes,
                       headers: list[tuple[bytes, bytes]], body: bytes,
                       connect_timeout: float, read_timeout: float) -> H1Response:
        """Send one request on an idle connection to ``ip:port`` for ``sni`` (a new one if
        there is none) and read the response head."""
        where = (ip, port, sni)
        conn = self._take_now(where)  # (no coroutine: connections on _TLSSocket)
        if conn is None or conn is False:
            if conn is False:
                conn = await self._take(where)
            if conn is None:
                conn = await self._dial(where, connect_timeout)
            checked = False
        else:
            # ``_take_now`` returned it after its ``reusable()``: no await, no loop turn,
            # no other code since (only the counter below), so ``send`` need not ask again
            checked = True
        count = stats["exchanges"] = stats["exchanges"] + 1
        if count == 1:
            checked = False  # (a log handler runs in between: asked again)
            logger.info("upstream HTTP/1.1: first exchange on the pool's own client")
        conn.send(method, target, headers, body, checked)
        if conn.h11 is None:
            head = await conn.read_head(read_timeout)
            if head is not None:
                # (``H1Response(self, conn, head.status, head.headers, b"1.1", head.reason,
                # read_timeout)``, its ``__init__`` inline: a call less per request)
                resp = H1Response.__new__(H1Response)
                resp.status = head.status
                resp.headers = head.headers
                resp.version = b"HTTP/1.1"
                resp.reason = head.reason
                resp._pool = self
                resp._conn = conn
                resp._timeout = read_timeout
                resp.length = head.length
                resp.head = head
                return resp
        while True:
            event = await conn.next_event(read_timeout)
            if type(event) is h11.Response:
                return H1Response(self, conn, event.status_code, event.headers.raw_items(),
                                  event.http_version, event.reason, read_timeout)
            if type(event) is h11.ConnectionClosed:  # (the end before any byte)
                conn.close()
                raise httpcore.RemoteProtocolError("Server disconnected without sending a "
                                                   "response.")
            # an InformationalResponse (100 Continue, 103 Early Hints): the final one follows

    def release(self, conn: _Conn) -> None:
        """A response read to its end: keep the connection for the next request, if it may
        carry one."""
        h = conn.h11
        if h is None:
            done = conn.keep and not conn.left and not conn.trailing
        else:
            done = (h.our_state is h11.DONE and h.their_state is h11.DONE
                    and not h.trailing_data[0])
        # (``not conn.reusable()``, inline: a call less per request)
        transport = conn.transport
        if (self.closed or not done or conn.closed or conn.eof or conn.unasked or conn.inbox
                or (transport._closing if type(transport) is _TLSSocket
                    else transport.is_closing())):
            conn.close()
            return
        conn.h11 = None  # (the next exchange starts with a fresh reader)
        conn.busy = False
        conn.expire_at = time.monotonic() + self._idle_for
        # (``setdefault(conn.where, deque())`` without a deque made per release: its
        # stack is there but for the first release or after a ``drop_expired`` emptied it)
        stack = self._idle.get(conn.where)
        if stack is None:
            stack = self._idle[conn.where] = deque()
        stack.append(conn)
        if len(stack) > MAX_IDLE:
            stack.popleft().close()

    async def prewarm(self, ip: str, port: int, sni: str, connect_timeout: float) -> str:
        """Open one connection, left idle for the next request ("http/1.1"); WantsHTTP2
        when the upstream chose HTTP/2."""
        conn = await self._dial((ip, port, sni), connect_timeout)
        if self.closed:
            conn.close()
        else:
            conn.expire_at = time.monotonic() + self._idle_for
            self._idle.setdefault(conn.where, deque()).append(conn)
        return "http/1.1"

    def drop_expired(self) -> int:
        """Close every idle connection past ``idle`` or closed by the upstream meanwhile;
        how many."""
        now = time.monotonic()
        dropped = 0
        for where, stack in list(self._idle.items()):
            keep = deque(c for c in stack if c.reusable() and c.expire_at > now)
            for conn in stack:
                if conn not in keep:
                    conn.close()
                    dropped += 1
            if keep:
                self._idle[where] = keep
            else:
                del self._idle[where]
        return dropped

    def idle_count(self) -> int:
        return sum(len(s) for s in self._idle.values())

    def next_due(self, now: float) -> float | None:
        """When ``drop_expired`` next has something to do (``time.monotonic``): the earliest
        idle connection's expiry; for a connection in use, ``idle`` from ``now`` at the
        earliest (its expiry starts when it is released); None: no connection is open."""
        due: float | None = None
        idle: set[_Conn] = set()
        for stack in self._idle.values():
            for conn in stack:
                idle.add(conn)
                if due is None or conn.expire_at < due:
                    due = conn.expire_at
        if any(not conn.closed and conn not in idle for conn in self._open):
            soonest = now + self._idle_for
            due = soonest if due is None else min(due, soonest)
        return due

    def close(self) -> list[_Conn]:
        """A reload: no connection of this pool is used again (busy ones close as their
        exchange ends). The idle ones it closed."""
        self.closed = True
        closed = [conn for stack in self._idle.values() for conn in stack]
        for conn in closed:
            conn.close()
        self._idle.clear()
        return closed

    async def aclose(self, wait: float = 1.0) -> None:
        """``close()``, then wait (at most ``wait`` seconds) until the TLS shutdown of
        each idle connection is done and its socket closed (shutdown, tests)."""
        gone = [conn.gone for conn in self.close()]
        if gone:
            await asyncio.wait(gone, timeout=wait)
