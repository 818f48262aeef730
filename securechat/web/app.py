"""make_app(config): the Tornado application with its routes and settings, nothing started."""

from __future__ import annotations

import logging
import socket

import tornado.httputil
import tornado.web
from tornado.log import access_log

from .. import __version__
from ..admin import api as admin
from ..config import Config
from ..filecrypto import blob_size
from ..relay.hub import Hub
from ..relay import stream
from ..relay.ws import ChatSocket
from ..storage.blobs import BlobStore
from ..storage.ciphertext_log import CiphertextLog
from ..tls import LocalCA
from . import blobs as blob_handlers
from ..relay import roomname
from . import proxy, resources, rooms, setup
from .canonical import CanonicalHost
from .hosts import HostPolicy
from .http_security import (MisdirectedHandler, NotFoundHandler, SecureHeadersMixin, SecureStaticFileHandler,
                            integrity_table)
from ..refusals import Throttled
from .redirect import CanonicalRedirectMixin


class IndexHandler(CanonicalRedirectMixin, SecureHeadersMixin, tornado.web.RequestHandler):
    """The chat page: `/` for the default room, `/r/<name>` for room <name>."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self, name: str | None = None) -> None:
        sri = self.settings["sri"]
        self.set_header("Cache-Control", "no-cache")
        default = self.hub.rooms.default
        if name is not None and roomname.problem(name) is not None:
            self.set_status(404)
            self.render("room-name.html", name=rooms.shown_name(name), why=roomname.problem(name),
                        suggestion=roomname.suggestion(name), rule=roomname.RULE, default_room=default, sri=sri)
            return
        # Service workers (*-sw.js) are not modules of the page: they run apart, never preloaded.
        modules = [path for path in sri if path.startswith("js/") and path != "js/main.js"
                   and not path.endswith("-sw.js")]
        # Over https with the local CA, a browser that has not installed it saw a warning: point
        # it at /setup (the page cannot tell whether this browser trusts the CA, so always).
        setup = self.settings.get("local_ca") is not None and self.request.protocol == "https"
        self.render("index.html", room=name or default, default_room=default,
                    invite_origin=rooms.invite_origin(self), version=__version__, sri=sri, modules=modules,
                    setup=setup)


class HealthHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        health = {"status": "ok", "version": __version__, "connections": len(self.hub.connections)}
        cluster = self.hub.cluster
        if cluster is not None:
            # Redis down: this process still serves its own members, but nobody on another
            # process hears them; a monitor should see that as unhealthy, hence the 503.
            health["cluster"] = cluster.status()
            if not cluster.up:
                health["status"] = "degraded"
                self.set_status(503)
        self.write(health)


# Refusals worth an admin's attention, but never a line per request: 1,000 malformed or
# unauthorised requests made 1,000 INFO lines. One line a minute per status.
QUIET = {400: "malformed requests", 401: "requests without a valid admin token", 403: "forbidden requests (a refused origin, a directory)",
         421: "requests for a host this server does not answer to (DNS rebinding?)",
         429: "requests over a per-address limit", 503: "requests over a server-wide limit"}
_refusals = Throttled(logging.getLogger("securechat"))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Refusals and misses are expected under abuse: quiet (refusals.Throttled), never per
    request at WARNING, or an attacker fills the server's log instead of its memory."""
    status = handler.get_status()
    request = handler.request
    if status in QUIET:
        _refusals.note(str(status), logging.INFO, "%d %s, e.g. %s %r from %s (Host %r)", status, QUIET[status],
                       request.method, request.path[:100], request.remote_ip, request.host[:100])
        return
    level = logging.ERROR if status >= 500 else logging.DEBUG
    access_log.log(level, "%d %s %s (%s) %.1fms", status, request.method, request.path[:200],
                   request.remote_ip, 1000.0 * request.request_time())


def open_log(config: Config) -> CiphertextLog:
    return CiphertextLog(
        config.log_dir,
        max_bytes=config.log_max_bytes,
        keep=config.log_keep,
        fsync=config.log_fsync,
        fsync_interval=config.log_fsync_interval,
    )


class Application(tornado.web.Application):
    """Applies the trusted-proxy rule once per request, before any handler exists.

    Every handler (pages, static files, errors, the admin API and the WebSocket) then sees the
    real client in request.remote_ip/protocol/host: the security headers computed when a handler
    is constructed, the origin check and the per-address limits all come after this point.
    """

    def get_handler_delegate(self, request, target_class, target_kwargs=None, path_args=None,
                             path_kwargs=None):
        trusted, hosts = self.settings["trusted_proxies"], self.settings["hosts"]
        misdirected = False
        # A unix-socket peer is the proxy ([server] unix_socket; its file mode says who may connect).
        from_proxy_socket = _from_unix_socket(request)
        if trusted or from_proxy_socket:
            view = proxy.client_view(request.remote_ip, request.protocol, request.host,
                                     request.headers, trusted, hosts.allows, always_trusted=from_proxy_socket)
            request.remote_ip, request.protocol, request.host = view.remote_ip, view.protocol, view.host
            request.host_name = tornado.httputil.split_host_and_port(view.host.lower())[0]
            misdirected = view.host_refused
        # Every request, pages and WebSocket handshakes alike, must be for a host we answer to.
        if misdirected or not hosts.allows(request.host, _local_address(request)):
            return super().get_handler_delegate(request, MisdirectedHandler)
        return super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)


def _from_unix_socket(request) -> bool:
    try:
        return request.connection.stream.socket.family == socket.AF_UNIX
    except AttributeError:
        return False


def _local_address(request) -> str | None:
    """The address this request's connection arrived on."""
    try:
        name = request.connection.stream.socket.getsockname()
    except (AttributeError, OSError):
        return None
    return name[0] if isinstance(name, tuple) else None


def open_blobs(config: Config) -> BlobStore | None:
    """The attachment store, or None when attachments are turned off."""
    if not config.attachments_enabled:
        return None
    return BlobStore(config.data_dir, max_blob_bytes=blob_size(config.attachments_max_bytes),
                     quota_bytes=config.attachments_quota_bytes, worker=config.worker)


def make_app(config: Config, ciphertext_log: CiphertextLog | None = None, blobs: BlobStore | None = None, *,
             canonical: CanonicalHost | None = None, local_ca: LocalCA | None = None,
             host_names: tuple[str, ...] = ()) -> tornado.web.Application:
    """Build the application; the caller owns the log and the blob store (each opened here
    when not given; server.shutdown closes both).

    canonical: redirect page loads under other LAN names of this machine to one host.
    local_ca: the CA (without its key) that /setup offers to devices; no /setup without it.
    host_names: this machine's LAN names and addresses (and certificate names) it answers to,
    besides what HostPolicy.for_server finds itself; the canonical host and its aliases too.
    """
    if canonical is not None:
        host_names = (*host_names, canonical.host, *canonical.aliases)
    hub = Hub(config, ciphertext_log if ciphertext_log is not None else open_log(config),
              blobs if blobs is not None else open_blobs(config))
    blob_api = blob_handlers.BlobApi(hub)
    stream_sessions = stream.StreamSessions(hub)
    routes = [
        (r"/", IndexHandler, {"hub": hub}),
        *rooms.routes(config.room),
        (r"/r/(.*)", IndexHandler, {"hub": hub}),
        (r"/healthz", HealthHandler, {"hub": hub}),
        (r"/ws", ChatSocket, {"hub": hub}),
        *blob_handlers.routes(blob_api),
        *stream.routes(stream_sessions),
        *admin.routes(hub, config.admin_token),
        *setup.routes(local_ca),
    ]
    static_dir = resources.static_dir()
    return Application(
        routes,
        trusted_proxies=proxy.parse_networks(config.proxy_trusted),
        hosts=HostPolicy.for_server(config, host_names),
        hub=hub,
        canonical=canonical,
        local_ca=local_ca,
        blob_api=blob_api,
        stream_sessions=stream_sessions,
        sri=integrity_table(static_dir),
        template_path=str(resources.template_dir()),
        static_path=str(static_dir),
        static_handler_class=SecureStaticFileHandler,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        websocket_max_message_size=config.max_frame_bytes,
        websocket_ping_interval=config.ping_interval,
        websocket_ping_timeout=config.ping_timeout,
        xsrf_cookies=False,
    )
