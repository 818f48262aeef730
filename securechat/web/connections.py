"""The TCP layer under every handler: how many connections, from whom, and what happens when
the process runs out of file descriptors.

Tornado's HTTPServer accepts every connection and lets each take an hour to send its headers;
1,100 half-sent requests from one address used up a default systemd service's 1,024 file
descriptors, after which Tornado's accept handler raised EMFILE on every loop iteration
(100 % CPU, ~40,000 log lines a second). Here:

* a connection over the total cap, or over its address's cap (per IPv4 address, per IPv6
  address and /64: relay/admission.py), is closed the moment it is accepted;
* the count covers the connection's whole life, a WebSocket after its upgrade included: a
  stream counts until its file descriptor is closed;
* when accept() fails for lack of descriptors the listening socket is taken off the loop for a
  growing pause (the kernel keeps queueing connections meanwhile), with one log line a minute.

Peers that are trusted proxies (and unix-socket peers, which can only be the proxy) are not
capped per address: every client behind them shares their address. The Hub counts those
clients by their forwarded address instead.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any, Callable, Iterable

import tornado.httpserver
from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream
from tornado.netutil import ssl_wrap_socket
from tornado.util import errno_from_exception

from ..relay.admission import Pool, address_keys
from . import proxy
from ..refusals import Throttled

log = logging.getLogger("securechat")

# accept() fails with these when the process or the system is out of descriptors or memory.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPTS_PER_WAKEUP = 128  # Tornado's own bound, so one busy socket cannot starve the loop
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0


class Slot:
    """One accepted connection's place in the TCP pool, given back exactly once."""

    __slots__ = ("_pool", "_keys")  # one per open connection: no __dict__

    def __init__(self, pool: Pool, keys: tuple):
        self._pool, self._keys = pool, keys
        pool.take(keys)

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.give_back(self._keys)


class _Counted:
    """A stream that gives its connection slot back when its descriptor closes."""

    def __init__(self, *args: Any, slot: Slot, **kwargs: Any) -> None:
        # Set before Tornado's own attributes, as every instance does, so the instances keep
        # sharing one key table (an attribute added afterwards cost each stream ~300 bytes).
        self._slot = slot
        super().__init__(*args, **kwargs)

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self._slot.release()


class CountedIOStream(_Counted, IOStream):
    pass


class CountedSSLIOStream(_Counted, SSLIOStream):
    pass


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """HTTPServer with connection caps and an accept loop that survives descriptor exhaustion."""

    def initialize(self, *args: Any, max_connections: int, max_per_address: int,
                   trusted_proxies: tuple = (), **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.tcp = Pool("tcp", max_connections, max_per_address)
        self.trusted_proxies = trusted_proxies
        self.refused = Throttled(log)

    # -- accepting -------------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> Callable[[], None]:
        """Like tornado.netutil.add_accept_handler, plus a back-off when accept() cannot succeed."""
        loop = IOLoop.current()
        state: dict[str, Any] = {"removed": False, "timer": None, "delay": BACKOFF_FIRST}

        def on_readable(fd, events) -> None:
            for _ in range(_ACCEPTS_PER_WAKEUP):
                if state["removed"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno in _EXHAUSTED:
                        pause(exc)
                        return
                    raise
                state["delay"] = BACKOFF_FIRST
                self._admit(connection, address)

        def pause(exc: OSError) -> None:
            # Level-triggered: while the queue is non-empty the socket stays readable, and every
            # loop iteration would fail the same way. Stop listening for a while instead.
            loop.remove_handler(sock)
            delay = state["delay"]
            state["delay"] = min(BACKOFF_MAX, delay * 2)
            state["timer"] = loop.call_later(delay, resume)
            self.refused.note("accept", logging.WARNING,
                              "cannot accept connections: %s; pausing accepts (raise LimitNOFILE or lower "
                              "limits.max_connections)", exc.strerror or exc)

        def resume() -> None:
            state["timer"] = None
            if not state["removed"]:
                loop.add_handler(sock, on_readable, IOLoop.READ)

        def remove() -> None:
            state["removed"] = True
            if state["timer"] is not None:
                loop.remove_timeout(state["timer"])
                state["timer"] = None
            else:
                loop.remove_handler(sock)

        loop.add_handler(sock, on_readable, IOLoop.READ)
        return remove

    def _admit(self, connection: socket.socket, address: Any) -> None:
        remote = address[0] if isinstance(address, tuple) and address else ""
        keys: tuple = ()
        if connection.family in (socket.AF_INET, socket.AF_INET6) and \
                not proxy.is_trusted(remote, self.trusted_proxies):
            keys = address_keys(remote)
        why = self.tcp.full_for(keys)
        if why is not None:
            connection.close()
            if why == "total":
                self.refused.note("tcp-total", logging.WARNING,
                                  "refusing connections: %d open, the limit (limits.max_connections)",
                                  self.tcp.size)
            else:
                self.refused.note("tcp-address", logging.INFO,
                                  "refusing connections from %s: over limits.max_connections_per_address",
                                  remote)
            return
        slot = Slot(self.tcp, keys)
        try:
            self._serve(connection, address, slot)
        except BaseException:
            slot.release()
            raise

    def _serve(self, connection: socket.socket, address: Any, slot: Slot) -> None:
        """tornado.tcpserver.TCPServer._handle_connection, with a counted stream."""
        if self.ssl_options is not None:
            try:
                connection = ssl_wrap_socket(connection, self.ssl_options, server_side=True,
                                             do_handshake_on_connect=False)
            except ssl.SSLError as err:
                if err.args[0] == ssl.SSL_ERROR_EOF:
                    connection.close()
                    slot.release()
                    return
                raise
            except OSError as err:
                # A connection closed right after it was made (a port scan) fails here.
                if errno_from_exception(err) in (errno.ECONNABORTED, errno.EINVAL):
                    connection.close()
                    slot.release()
                    return
                raise
            stream: IOStream = CountedSSLIOStream(connection, slot=slot, max_buffer_size=self.max_buffer_size,
                                                  read_chunk_size=self.read_chunk_size)
        else:
            stream = CountedIOStream(connection, slot=slot, max_buffer_size=self.max_buffer_size,
                                     read_chunk_size=self.read_chunk_size)
        future = self.handle_stream(stream, address)
        if future is not None:
            IOLoop.current().add_future(gen.convert_yielded(future), lambda f: f.result())
