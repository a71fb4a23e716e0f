"""mitmproxy's TLS layers read, write and drain their memory BIOs with fewer Python calls
and no exception per event (a speed patch of the seam).

Per proxied request the agent's ``TLSLayer`` takes one ``receive_data`` (the request) and
one ``send_data`` (the response). mitmproxy's code, through pyOpenSSL, pays for each:

* ``tls_interact`` (after every read and write) calls ``bio_read`` until pyOpenSSL raises
  ``WantReadError``, an exception built and caught each time;
* ``receive_data`` calls ``recv`` until it raises ``WantReadError``, each ``recv``
  allocating a fresh 64 KiB buffer and copying through ``ffi.buffer(...)[:]``;
* ``send_data`` goes through ``sendall``'s generic loop (``from_buffer``, text checks).

The patched methods make the same OpenSSL calls that move bytes (``BIO_write``,
``SSL_read``, ``SSL_write``, ``BIO_read``), in the same order, with the same arguments and
sizes, and read pyOpenSSL's answers the way pyOpenSSL does (``BIO_read`` is not called
where it would fail with an empty BIO: the BIO's count says so first):

* ``tls_interact`` asks the outgoing memory BIO how many bytes it holds
  (``BIO_get_mem_data``, what ``BIO_read`` reads from) and reads while there are any:
  the same ``SendData`` commands, 65535 bytes at most each;
* ``receive_data`` writes the bytes into the incoming BIO and calls ``SSL_read`` (65535
  bytes at most) until it fails, exactly as mitmproxy's loop does. What pyOpenSSL's
  ``_raise_ssl_error`` does after each call is done inline for the two answers that are
  not errors (the callbacks' stored problems raised first, then data, or
  ``SSL_ERROR_WANT_READ``: the end of the loop, without building the exception; a
  callback helper's ``raise_if_problem`` called only when it holds a problem, which is when
  pyOpenSSL's does anything); every
  other answer (close_notify, an alert, a syscall error) goes through pyOpenSSL's own
  ``_raise_ssl_error`` and mitmproxy's own ``except`` clauses, so the same ``Log`` line
  and close handling follow;
* ``send_data`` makes ``sendall``'s first ``SSL_write`` of a ``bytes`` payload itself; if
  it wrote everything (a memory BIO always takes everything) that is the end of
  ``sendall``, otherwise pyOpenSSL's ``_raise_ssl_error`` and ``sendall`` take over from
  where it stopped. The drain after it reads as ``tls_interact``'s loop reads, with two
  questions fewer: after a full write the outgoing BIO holds its record (read without
  asking ``BIO_get_mem_data`` first), and a read shorter than the 65535 bytes asked took
  all a memory BIO held (``mem_read``: ``min(length, asked)``), so the loop ends there
  without asking again. (What the stock loop's next ``bio_read`` would find after that
  read is what was written into the BIO while the ``SendData`` was out: nothing, as a
  layer handles one event at a time and only its own methods write its connection; had
  anything been, the ``tls_interact`` that follows every write would send it, in order.)

And between a TLS layer and its child, ``TunnelLayer.event_to_child`` hands each command
the child answers to ``_handle_command``, one more generator per command (the lean layer's
hook and its response, per request): the patched loop makes the same decision in place for
the two kinds a request produces (a ``SendData`` on the layer's own connection goes to
``send_data``; a command that is no ``ConnectionCommand`` goes up as it is) and hands every
other command to ``_handle_command``; a subclass with its own ``_handle_command`` keeps
mitmproxy's loop. Two generators fewer again per request: ``receive_data`` runs that
patched ``event_to_child``'s body in place for the agent's plaintext (a layer whose
``event_to_child`` is that one), and ``event_to_child`` runs the patched ``send_data``'s
body in place for a ``SendData`` of the layer's own connection (a layer whose
``send_data`` and ``tls_interact`` are the patched ones; the write itself is ``write``,
shared by both). Told by seam/bypass.py's ``Route.serve`` the connection handler that
would write every such record to the agent (``Route.sink``, until ``serve`` splices),
``event_to_child`` writes each record as the handler writes a ``SendData``
(``connio.send_data``) instead of yielding one.

Anything else (a payload that is not ``bytes``, an empty one, a connection that is not a
memory-BIO ``SSL.Connection``) takes mitmproxy's method. mitmproxy's methods are
fingerprinted (``need.unchanged``: their compiled code, else their source text): if a
release changes one, that method stays mitmproxy's and one WARNING says so, so an upgrade
can make the proxy slower, never different. tests/unit/test_speed_tlsio.py compares both
on real in-memory handshakes (pyOpenSSL and Python ``ssl`` agents; a whole layer with a
scripted child: close_notify, alerts, corrupt, truncated and split records, renegotiation).
bench/tlsrecord.py counts the instructions of one request's record in and record out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import commands, events, tunnel
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL

from vaultproxy.seam import need
from vaultproxy.seam.connio import send_data
from vaultproxy.seam.need import missing
from vaultproxy.seam.objects import data_received_of, send_data_of

logger = logging.getLogger(__name__)

_SendData, _Log, _DataReceived = commands.SendData, commands.Log, events.DataReceived
_CAN_READ = connection.ConnectionState.CAN_READ

#: sha256 (first 16 hex digits) of the source of each mitmproxy method replaced here, as
#: mitmproxy 12.3 has it: a method whose source differs stays mitmproxy's.
FINGERPRINTS = {
    "receive_data": "85c0e6b656c324e5",
    "send_data": "35a29a1b0b0cb184",
    "tls_interact": "62d6d57d43dd1a2e",
}
#: the same, of ``TunnelLayer``'s.
TUNNEL_FINGERPRINTS = {
    "event_to_child": "119a33642637d420",
    "_handle_command": "11ede598b3b37965",
}
#: ``need.code_fingerprint`` of each (``TunnelLayer``'s as ``TunnelLayer.<name>``), on
#: ``need.CODE_MAGIC``'s bytecode: matched, start-up reads no source file.
CODE_FINGERPRINTS = {
    "receive_data": "531464c15d7dbcf2",
    "send_data": "3c3161237a1b18c2",
    "tls_interact": "d7df77f86c27c515",
    "TunnelLayer.event_to_child": "d3cf4e320f390a01",
    "TunnelLayer._handle_command": "2b685f1960435830",
}
#: pyOpenSSL's ``_CallbackExceptionHelper.raise_if_problem`` (``if self._problems: ...``):
#: its ``need.fingerprint`` and ``need.code_fingerprint``. Unchanged, the loops below call it
#: only for a helper that holds a problem (or whose class has its own); else always.
RAISE_IF_PROBLEM = ("b88aff40bdb7525f", "5ca621d7e594bc45")
#: mitmproxy's own methods, as ``TLSLayer`` had them before ``install`` (for the tests);
#: ``TunnelLayer``'s under ``TunnelLayer.<name>``.
STOCK: dict[str, Callable[..., Any]] = {}
_PYOPENSSL = ("_lib", "_ffi", "WantReadError", "ZeroReturnError", "SysCallError", "Error")
_LIB = ("BIO_get_mem_data", "BIO_read", "BIO_write", "SSL_read", "SSL_write",
        "SSL_get_error", "SSL_ERROR_WANT_READ")
_CONN = ("bio_read", "bio_write", "recv", "sendall", "_raise_ssl_error", "_handle_bio_errors")
_HELPERS = ("_verify_helper", "_alpn_select_helper", "_ocsp_helper")


def missing_symbol() -> str | None:
    lib = getattr(SSL, "_lib", None)
    return (missing(tls, "TLSLayer") or missing(tls.TLSLayer, *FINGERPRINTS)
            or missing(tunnel, "TunnelLayer", "TunnelState")
            or missing(tunnel.TunnelLayer, *TUNNEL_FINGERPRINTS)
            or missing(SSL, *_PYOPENSSL) or missing(lib, *_LIB)
            or missing(SSL.Connection, *_CONN)
            or missing(SSL.Context(SSL.TLS_METHOD), *_HELPERS))


def _stock(name: str) -> Any:
    owner, _, attr = name.rpartition(".")
    cls = tunnel.TunnelLayer if owner == "TunnelLayer" else tls.TLSLayer
    return STOCK.get(name) or getattr(cls, attr)


def fingerprint(name: str) -> str | None:
    """The fingerprint of mitmproxy's ``TLSLayer.<name>`` (``TunnelLayer.<name>``: that
    class's) as installed (``need.fingerprint``)."""
    return need.fingerprint(_stock(name))


def _unchanged(name: str, want: str) -> bool:
    return need.unchanged(_stock(name), want, CODE_FINGERPRINTS.get(name))


def pending_out(conn: Any) -> int | None:
    """Bytes waiting in ``conn``'s outgoing memory BIO (None: it has none)."""
    bio = getattr(conn, "_from_ssl", None)
    if bio is None or type(conn) is not SSL.Connection:
        return None
    return int(SSL._lib.BIO_get_mem_data(bio, SSL._ffi.NULL))  # type: ignore[attr-defined]


_local = threading.local()


def _scratch() -> Any:
    """This thread's 64 KiB read buffer: filled by one C call and copied out by the next,
    never held across a yield (pyOpenSSL allocates one per ``recv``/``bio_read``)."""
    try:
        return _local.buf
    except AttributeError:
        buf = _local.buf = SSL._ffi.new_allocator(should_clear_after_alloc=False)(  # type: ignore[attr-defined]
            "char[]", 65535)
        return buf


def _memory_bio(conn: Any) -> bool:
    return (type(conn) is SSL.Connection and conn._into_ssl is not None
            and conn._from_ssl is not None)


#: the patched ``TunnelLayer.event_to_child`` once ``install`` put it in place (empty: it
#: stays mitmproxy's); ``receive_data`` runs its body in place for a layer that has it
FAST_TO_CHILD: list[Callable[..., Any]] = []
#: the functions ``_make`` built (``install`` puts those whose mitmproxy method is unchanged
#: in place): ``decided`` asks a layer's class for these
FAST: dict[str, Callable[..., Any]] = {}


def decided(layer: Any) -> bool:
    """May ``layer``'s ``receive_data`` and ``event_to_child`` be called with ``decided``
    true: its class has this module's ``receive_data``, ``send_data``, ``tls_interact`` and
    ``event_to_child`` and mitmproxy's ``_handle_command``, and its ``tls`` is a
    memory-BIO ``Connection`` (``_memory_bio``)? Each call's own checks of these, taken
    once for a connection (seam/bypass.py's ``Route``, which holds the answer while the
    layer's ``tls`` is the one asked about; the classes' methods, as the route's other
    decisions, are taken to stay as they were when the route was made)."""
    kind = type(layer)
    return (bool(FAST_TO_CHILD) and bool(FAST) and "TunnelLayer._handle_command" in STOCK
            and kind.receive_data is FAST["receive_data"]
            and kind.send_data is FAST["send_data"]
            and kind.tls_interact is FAST["tls_interact"]
            and kind.event_to_child is FAST_TO_CHILD[0]
            and kind._handle_command is STOCK["TunnelLayer._handle_command"]
            and _memory_bio(getattr(layer, "tls", None)))


def _make(stock: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    lib, ffi = SSL._lib, SSL._ffi  # type: ignore[attr-defined]
    null, unpack = ffi.NULL, ffi.unpack
    mem_data, bio_read, bio_write = lib.BIO_get_mem_data, lib.BIO_read, lib.BIO_write
    ssl_read, ssl_write, get_error = lib.SSL_read, lib.SSL_write, lib.SSL_get_error
    want_read = lib.SSL_ERROR_WANT_READ
    WantReadError, ZeroReturnError = SSL.WantReadError, SSL.ZeroReturnError
    SysCallError, Error = SSL.SysCallError, SSL.Error
    Connection = SSL.Connection
    stock_interact = stock["tls_interact"]
    stock_receive, stock_send = stock["receive_data"], stock["send_data"]
    establishing = tunnel.TunnelState.ESTABLISHING
    connection_command = commands.ConnectionCommand
    stock_handle = STOCK.get("TunnelLayer._handle_command", tunnel.TunnelLayer._handle_command)
    helper = getattr(SSL, "_CallbackExceptionHelper", None)
    rip = getattr(helper, "raise_if_problem", None)
    if rip is None or not need.unchanged(rip, *RAISE_IF_PROBLEM):
        rip = None  # (every helper's own ``raise_if_problem`` called, as pyOpenSSL does)

    def drain(layer: Any, conn: Any) -> Generator[Any, Any, None]:
        bio = conn._from_ssl
        while mem_data(bio, null) > 0:
            buf = _scratch()
            n = bio_read(bio, buf, 65535)
            if n <= 0:  # (never: the BIO holds bytes) pyOpenSSL's answer, and the stock end
                try:
                    conn._handle_bio_errors(bio, n)
                except WantReadError:
                    return
            yield send_data_of(layer.conn, unpack(buf, n))

    def tls_interact(self: Any) -> Generator[Any, Any, None]:
        conn = self.tls
        if not _memory_bio(conn):
            yield from stock_interact(self)
            return
        yield from drain(self, conn)

    def write(conn: Any, data: bytes, size: int) -> bool:
        """``send_data``'s ``sendall`` and its ``except``: True if its first ``SSL_write``
        took all of ``data`` (its record is in the outgoing BIO)."""
        h: Any
        try:
            ssl, ctx = conn._ssl, conn._context
            n = ssl_write(ssl, data, size)
            # pyOpenSSL's _raise_ssl_error: stored callback problems first ...
            h = ctx._verify_helper
            if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                h.raise_if_problem()
            h = ctx._alpn_select_helper
            if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                h.raise_if_problem()
            h = ctx._ocsp_helper
            if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                h.raise_if_problem()
            # ... then SSL_get_error, SSL_ERROR_NONE for n > 0: all written ends sendall
            if n == size:
                return True
            conn._raise_ssl_error(ssl, n)  # raises for every n <= 0
            if 0 < n:  # a partial write (never into a memory BIO): sendall goes on
                conn.sendall(memoryview(data)[n:])
        except (ZeroReturnError, SysCallError):
            pass  # as mitmproxy: the peer may still be sending, which is discarded
        return False

    def receive_data(self: Any, data: bytes, decided: bool = False
                     ) -> Generator[Any, Any, None]:
        # ``decided``: ``decided(self)`` held (checked once for the connection, not here)
        conn: Any = self.tls
        if type(data) is not bytes or not decided and (
                type(conn) is not Connection or conn._into_ssl is None
                or conn._from_ssl is None):  # (``_memory_bio``)
            yield from stock_receive(self, data)
            return
        if data:
            into = conn._into_ssl
            n = bio_write(into, data, len(data))
            if n <= 0:
                conn._handle_bio_errors(into, n)
        ssl, ctx = conn._ssl, conn._context
        h: Any
        plaintext: Any = b""  # (one read's bytes as they are; a bytearray from the second)
        close = False
        try:  # (``_scratch()``: each read copied out before the next, no yield in between)
            buf = _local.buf
        except AttributeError:
            buf = _scratch()
        while True:
            try:
                n = ssl_read(ssl, buf, 65535)
                # pyOpenSSL's _raise_ssl_error: stored callback problems first ...
                h = ctx._verify_helper
                if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                    h.raise_if_problem()
                h = ctx._alpn_select_helper
                if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                    h.raise_if_problem()
                h = ctx._ocsp_helper
                if h is not None and (h._problems or type(h).raise_if_problem is not rip):
                    h.raise_if_problem()
                # ... then SSL_get_error: SSL_ERROR_NONE for every n > 0
                if n > 0:
                    if plaintext:
                        if type(plaintext) is bytes:
                            plaintext = bytearray(plaintext)
                        plaintext += unpack(buf, n)
                    else:
                        plaintext = unpack(buf, n)
                    continue
                if get_error(ssl, n) == want_read:
                    break
                conn._raise_ssl_error(ssl, n)  # raises for every other answer
                plaintext = bytearray(plaintext)  # (what recv returns if it did not)
                plaintext += ffi.buffer(buf, n)[:]
            except WantReadError:
                break
            except ZeroReturnError:
                close = True
                break
            except Error as e:
                # mitmproxy's own handling (see TLSLayer.receive_data)
                yield _Log(f"TLS Error: {e}", logging.WARNING)
                break

        if decided or type(self).tls_interact is tls_interact:
            if mem_data(conn._from_ssl, null) > 0:  # (``drain``'s first test: seldom)
                yield from drain(self, conn)
        else:  # (a subclass's own)
            yield from self.tls_interact()

        if plaintext:
            event = data_received_of(self.conn, bytes(plaintext))  # (seam/objects.py)
            if not decided and (
                    not FAST_TO_CHILD or type(self).event_to_child is not FAST_TO_CHILD[0]
                    or type(self)._handle_command is not stock_handle):
                yield from self.event_to_child(event)
            # (the patched ``TunnelLayer.event_to_child``'s body, in place)
            elif self.tunnel_state is establishing and not self.command_to_reply_to:
                self._event_queue.append(event)
            else:
                for command in self.child_layer.handle_event(event):
                    if type(command) is _SendData and (command.connection is self.conn
                                                       or command.connection == self.conn):
                        yield from self.send_data(command.data)
                    elif not isinstance(command, connection_command):
                        yield command
                    else:
                        yield from self._handle_command(command)
        if close:
            self.conn.state &= ~_CAN_READ
            if self.debug:
                yield _Log(f"{self.debug}[tls] close_notify {self.conn}", logging.DEBUG)
            yield from self.event_to_child(events.ConnectionClosed(self.conn))

    def send_data(self: Any, data: bytes) -> Generator[Any, Any, None]:
        conn = self.tls
        size = len(data) if type(data) is bytes else 0
        if not (0 < size <= 2147483647) or not _memory_bio(conn):
            yield from stock_send(self, data)
            return
        full = write(conn, data, size)
        if type(self).tls_interact is tls_interact:
            # (``drain`` in place, each read as ``drain`` reads it: after a full write the
            # BIO holds its record, and a read shorter than asked took all the BIO held)
            bio = conn._from_ssl
            if full or mem_data(bio, null) > 0:
                while True:
                    try:
                        buf = _local.buf
                    except AttributeError:
                        buf = _scratch()
                    n = bio_read(bio, buf, 65535)
                    if n <= 0:  # (never: the BIO holds bytes) pyOpenSSL's answer, the stock end
                        try:
                            conn._handle_bio_errors(bio, n)
                        except WantReadError:
                            return
                    yield send_data_of(self.conn, unpack(buf, n))
                    if n < 65535 or mem_data(bio, null) <= 0:
                        return
        else:  # (a subclass's own)
            yield from self.tls_interact()

    return {"tls_interact": tls_interact, "receive_data": receive_data,
            "send_data": send_data, "write": write}


def _make_tunnel(stock_to_child: Callable[..., Any], stock_handle: Callable[..., Any],
                 fast: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    establishing = tunnel.TunnelState.ESTABLISHING
    connection_command = commands.ConnectionCommand
    fast_send, write, tls_interact = fast["send_data"], fast["write"], fast["tls_interact"]
    mem_data, bio_read = SSL._lib.BIO_get_mem_data, SSL._lib.BIO_read  # type: ignore[attr-defined]
    null, unpack = SSL._ffi.NULL, SSL._ffi.unpack  # type: ignore[attr-defined]
    WantReadError, Connection = SSL.WantReadError, SSL.Connection

    def event_to_child(self: Any, event: Any, decided: bool = False, agent: Any = None
                       ) -> Generator[Any, Any, None]:
        # ``decided``: ``decided(self)`` held (checked once for the connection, not here);
        # ``agent``: with ``decided``, a seam/bypass.py ``Route`` whose ``serve`` reads these
        # commands: while its ``sink`` is a connection handler, each record for this
        # layer's ``conn`` is written as that handler writes a ``SendData``
        # (``connio.send_data``) instead of made and yielded
        if not decided and type(self)._handle_command is not stock_handle:
            yield from stock_to_child(self, event)
            return
        if self.tunnel_state is establishing and not self.command_to_reply_to:
            self._event_queue.append(event)
            return
        for command in self.child_layer.handle_event(event):
            # ``_handle_command``'s first two branches, in place
            if type(command) is _SendData and (command.connection is self.conn
                                               or command.connection == self.conn):
                data = command.data
                conn: Any = self.tls if decided else getattr(self, "tls", None)
                if (type(data) is not bytes or not 0 < len(data) <= 2147483647
                        or not decided and (
                            type(self).send_data is not fast_send
                            or type(self).tls_interact is not tls_interact
                            or type(conn) is not Connection or conn._into_ssl is None
                            or conn._from_ssl is None)):  # (``_memory_bio``)
                    yield from self.send_data(data)
                    continue
                # (the patched ``TLSLayer.send_data``'s body, in place)
                full = write(conn, data, len(data))
                bio = conn._from_ssl
                if full or mem_data(bio, null) > 0:
                    while True:
                        try:
                            buf = _local.buf
                        except AttributeError:
                            buf = _scratch()
                        n = bio_read(bio, buf, 65535)
                        if n <= 0:  # (never: the BIO holds bytes) the stock end
                            try:
                                conn._handle_bio_errors(bio, n)
                            except WantReadError:
                                break
                        sink = None if agent is None else agent.sink
                        if sink is None:
                            yield send_data_of(self.conn, unpack(buf, n))
                        else:
                            record = unpack(buf, n)
                            if record:  # (as ``Route._short`` drops an empty one)
                                send_data(sink, self.conn, record)
                        if n < 65535 or mem_data(bio, null) <= 0:
                            break
            elif not isinstance(command, connection_command):
                yield command
            else:
                yield from self._handle_command(command)

    return event_to_child


def install() -> bool:
    """Replace the TLS layer's methods whose source is the one these were written against;
    False if pyOpenSSL or mitmproxy lack a symbol (nothing replaced)."""
    if getattr(tls.TLSLayer, "_vaultproxy_fast", False):
        return True
    if missing_symbol() is not None:
        return False
    stock = {name: getattr(tls.TLSLayer, name) for name in FINGERPRINTS}
    STOCK.update(stock)
    cls = tunnel.TunnelLayer
    STOCK.update({f"TunnelLayer.{name}": getattr(cls, name) for name in TUNNEL_FINGERPRINTS})
    fast = _make(stock)
    FAST.update(fast)
    for name, want in FINGERPRINTS.items():
        if _unchanged(name, want):
            setattr(tls.TLSLayer, name, fast[name])
        else:
            logger.warning("mitmproxy's TLSLayer.%s is not the one vaultproxy's fast TLS I/O "
                           "was written against: it stays mitmproxy's (slower)", name)
    if all(_unchanged(f"TunnelLayer.{name}", want) for name, want in TUNNEL_FINGERPRINTS.items()):
        cls.event_to_child = _make_tunnel(  # type: ignore[method-assign]
            STOCK["TunnelLayer.event_to_child"], STOCK["TunnelLayer._handle_command"], fast)
        FAST_TO_CHILD[:] = [cls.event_to_child]
    else:
        logger.warning("mitmproxy's TunnelLayer is not the one vaultproxy's fast TLS I/O was "
                       "written against: its event_to_child stays mitmproxy's (slower)")
    tls.TLSLayer._vaultproxy_fast = True  # type: ignore[attr-defined]
    return True
