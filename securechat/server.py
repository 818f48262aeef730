"""Running the server: listen, shut down gracefully on SIGINT/SIGTERM, close the log last."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import secrets
import signal
import ssl
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.ioloop import PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from . import refusals
from .config import Config
from .relay.hub import Hub
from .storage.ciphertext_log import LogError
from .web import proxy
from .web.app import make_app, open_blobs, open_log
from .web.blobs import HOUSEKEEPING_SECONDS
from .web.connections import GuardedHTTPServer

log = logging.getLogger("securechat")

GOING_AWAY = 1001
# Young-generation threshold for the cyclic garbage collector; see tune_garbage_collector().
GC_THRESHOLDS = (10_000, 10, 10)


class ListenError(Exception):
    """A socket the configuration asks for cannot be opened; the message says which and why."""


# The proxy socket: owner and group may connect (the group being the proxy's), nobody else.
PROXY_SOCKET_MODE = 0o660


def bind_proxy_socket(path: Path) -> socket.socket:
    """Listen on [server] unix_socket. A stale socket left by an earlier run is replaced; any
    other file there is not touched."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nobody answers: left behind by an earlier run
            else:
                raise ListenError(f"server.unix_socket {path} is in use by another process")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"cannot use {path} as server.unix_socket: {exc.strerror}") from None
    try:
        return tornado.netutil.bind_unix_socket(str(path), mode=PROXY_SOCKET_MODE)
    except ValueError:
        raise ListenError(f"server.unix_socket {path} exists and is not a socket; "
                          "remove it or choose another path") from None
    except OSError as exc:
        raise ListenError(f"cannot listen on the unix socket {path} (server.unix_socket): "
                          f"{exc.strerror or exc}") from None


@dataclass
class RunningServer:
    """A started server: the pieces shutdown needs, in the order it needs them."""

    config: Config
    app: tornado.web.Application
    http: tornado.httpserver.HTTPServer
    port: int
    housekeeping: PeriodicCallback | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def hub(self) -> Hub:
        return self.app.settings["hub"]

    async def shutdown(self) -> None:
        self.http.stop()
        if self.config.unix_socket is not None:
            with contextlib.suppress(OSError):
                Path(self.config.unix_socket).unlink()
        if self.housekeeping is not None:
            self.housekeeping.stop()
        self.hub.shutdown(GOING_AWAY, "the server is shutting down")
        await asyncio.sleep(0.2)  # let the close frames leave before the loop ends
        await self.http.close_all_connections()
        if self.hub.cluster is not None:
            await self.hub.cluster.stop()
        if self.hub.blobs is not None:
            self.hub.blobs.close()
        self.hub.log.close()
        self.stopped.set()


async def start(config: Config, ssl_context: ssl.SSLContext | None = None, *, sockets=None,
                **app_options) -> RunningServer:
    """Open the log, build the app and listen; the returned port is the real one (port 0 works).

    `sockets`: listening sockets bound already (a worker of `serve --workers N` inherits them).
    app_options go to make_app (the canonical host, the local CA for /setup)."""
    if config.admin_token is None:
        # A fresh token per start: it only ever lives in memory and the owner-only runtime file.
        config = config.replace(admin_token=secrets.token_urlsafe(32))
    config = fit_to_descriptor_limit(config)
    refusals.install()
    ciphertext_log = open_log(config)
    blobs = None
    try:
        blobs = open_blobs(config)
        app = make_app(config, ciphertext_log, blobs, **app_options)
        http = http_server(app, config, ssl_context)
        # listen_host None binds every interface of both families (0.0.0.0 and ::).
        if sockets is None:
            sockets = tornado.netutil.bind_sockets(config.port, address=config.listen_host)
    except BaseException:
        if blobs is not None:
            blobs.close()
        ciphertext_log.close()
        raise
    port = sockets[0].getsockname()[1]
    if config.unix_socket is not None:
        try:
            sockets.append(bind_proxy_socket(Path(config.unix_socket)))
        except BaseException:
            for sock in sockets:
                sock.close()
            if blobs is not None:
                blobs.close()
            ciphertext_log.close()
            raise
    http.add_sockets(sockets)
    if config.cluster_redis_url is not None:
        # Only now, and only when configured: without a Redis URL nothing of it is imported.
        from .cluster.bridge import Cluster
        inner_port = None
        if app.settings["blob_api"].store is not None:
            # Where the other workers of this machine pass on the attachment requests of our
            # members (web/blobs.py): loopback only, and each must prove the cluster's secret.
            inner = tornado.netutil.bind_sockets(0, address="127.0.0.1")
            http.add_sockets(inner)
            inner_port = inner[0].getsockname()[1]
        Cluster(app.settings["hub"], config, port=port, streams=app.settings["stream_sessions"],
                inner_port=inner_port).start()
    quiet_closed_writes(asyncio.get_running_loop())
    housekeeping = None
    if blobs is not None:
        api = app.settings["blob_api"]
        # Abandoned uploads go within minutes; retention runs hourly (and at start-up, soon).
        housekeeping = PeriodicCallback(api.housekeeping, HOUSEKEEPING_SECONDS * 1000)
        housekeeping.start()
    return RunningServer(config, app, http, port, housekeeping)


def http_server(app: tornado.web.Application, config: Config,
                ssl_context: ssl.SSLContext | None = None) -> GuardedHTTPServer:
    """The HTTPServer with every limit that applies before a handler runs."""
    return GuardedHTTPServer(
        app, ssl_options=ssl_context, xheaders=False,
        max_connections=config.max_connections, max_per_address=config.max_connections_per_address,
        trusted_proxies=proxy.parse_networks(config.proxy_trusted),
        # Tornado's one deadline for a request head (the TLS handshake included) is also how
        # long an idle keep-alive connection may stay: its default is an hour.
        idle_connection_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        max_body_size=config.max_body_bytes,
        # What one read may buffer: a whole WebSocket frame or a default-sized body, not 100 MiB.
        max_buffer_size=max(config.max_frame_bytes, config.max_body_bytes) + 1024 * 1024,
    )


def descriptor_reserve(soft_limit: int) -> int:
    """Descriptors kept back from connections for the log, static files, gzip and the like."""
    return max(16, min(64, soft_limit // 8))


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself used
    except OSError:
        return 16


def fit_to_descriptor_limit(config: Config) -> Config:
    """max_connections below the file-descriptor limit: raise the soft limit if the hard one
    allows, else lower max_connections and say so in one line.

    Every connection is a descriptor. Past the limit accept() fails (EMFILE) and so does
    opening the log or a static file: better to refuse the 1,001st connection than all of that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    in_use = open_descriptors()
    wanted = config.max_connections + in_use + 64
    if soft != infinite and soft < wanted and (hard == infinite or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == infinite else min(hard, wanted), hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == infinite:
        return config
    room = soft - in_use - descriptor_reserve(soft)
    if room >= config.max_connections:
        return config
    room = max(1, room)
    log.warning("limits.max_connections is %d, but the file-descriptor limit of %d (ulimit -n; LimitNOFILE= "
                "under systemd) leaves room for %d: serving at most %d connections",
                config.max_connections, soft, room, room)
    return config.replace(max_connections=room)


def quiet_closed_writes(loop: asyncio.AbstractEventLoop) -> None:
    """A write to a peer that vanished fails inside a future nobody awaits; asyncio would log
    each as "exception was never retrieved". That is a normal disconnect, not an error."""
    default = loop.get_exception_handler()

    def handler(loop, context) -> None:
        if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def install_signal_handlers(server: RunningServer) -> None:
    """First SIGINT/SIGTERM shuts down gracefully; a second one exits at once; SIGHUP rotates."""
    loop = asyncio.get_running_loop()
    state = {"stopping": False}

    def on_signal() -> None:
        if state["stopping"]:
            log.warning("second interrupt: exiting without a clean shutdown")
            os._exit(130)
        state["stopping"] = True
        log.info("shutting down: closing connections and the ciphertext log")
        loop.create_task(server.shutdown())

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # SIGHUP (systemctl reload) rotates the log, like logrotate's postrotate convention; the
    # handler runs on the loop thread, like every append, so no record lands mid-rotation.
    loop.add_signal_handler(signal.SIGHUP, rotate_now, server)


def tune_garbage_collector() -> None:
    """Collect the youngest generation every 10,000 allocations instead of Python's 700.

    Every delivery allocates a few container objects (Tornado wraps each write in a Task) that
    live until the socket takes the bytes. At 700, a message to 250 members ran a young
    collection every ~70 deliveries mid-fan-out, each promoting the writes still in flight, so
    full collections kept re-walking the whole heap: ~3.7 ms of a ~20 ms message (bench at
    N = 250). At 10,000 that is ~0.15 ms. Nearly everything here is freed by reference
    counting; the collector only has to find cycles, and a cycle waits at most 10,000
    allocations longer. Process-wide, so the serving process sets it, not start() (tests run
    servers inside the pytest process).
    """
    gc.set_threshold(*GC_THRESHOLDS)


def rotate_now(server: RunningServer) -> None:
    try:
        rotated = server.hub.log.rotate()
    except (LogError, OSError) as exc:
        log.error("SIGHUP: could not rotate the ciphertext log: %s", exc)
        return
    if rotated is None:
        log.info("SIGHUP: the ciphertext log is empty; nothing to rotate")
    else:
        log.info("SIGHUP: rotated the ciphertext log to %s", rotated.name)

