"""make_app(config): the Tornado application with its routes and settings, nothing started."""

from __future__ import annotations

import logging

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
from . import proxy, resources, setup
from .canonical import CanonicalHost
from .http_security import NotFoundHandler, SecureHeadersMixin, SecureStaticFileHandler, integrity_table
from .redirect import CanonicalRedirectMixin


class IndexHandler(CanonicalRedirectMixin, SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        sri = self.settings["sri"]
        # Service workers (*-sw.js) are not modules of the page: they run apart, never preloaded.
        modules = [name for name in sri if name.startswith("js/") and name != "js/main.js"
                   and not name.endswith("-sw.js")]
        self.set_header("Cache-Control", "no-cache")
        # Over https with the local CA, a browser that has not installed it saw a warning: point
        # it at /setup (the page cannot tell whether this browser trusts the CA, so always).
        setup = self.settings.get("local_ca") is not None and self.request.protocol == "https"
        self.render("index.html", room=self.hub.rooms.default, version=__version__, sri=sri, modules=modules,
                    setup=setup)


class HealthHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write({"status": "ok", "version": __version__, "connections": len(self.hub.connections)})


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Refusals (429/503) and misses are expected under abuse: log them quietly, never per request
    at WARNING, or an attacker fills the server's log instead of its memory."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.INFO if status in (401, 403) else logging.DEBUG
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.1fms", status, request.method, request.path,
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
        trusted = self.settings["trusted_proxies"]
        if trusted:
            view = proxy.client_view(request.remote_ip, request.protocol, request.host,
                                     request.headers, trusted)
            request.remote_ip, request.protocol, request.host = view.remote_ip, view.protocol, view.host
            request.host_name = tornado.httputil.split_host_and_port(view.host.lower())[0]
        return super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)


def open_blobs(config: Config) -> BlobStore | None:
    """The attachment store, or None when attachments are turned off."""
    if not config.attachments_enabled:
        return None
    return BlobStore(config.data_dir, max_blob_bytes=blob_size(config.attachments_max_bytes),
                     quota_bytes=config.attachments_quota_bytes)


def make_app(config: Config, ciphertext_log: CiphertextLog | None = None, blobs: BlobStore | None = None, *,
             canonical: CanonicalHost | None = None, local_ca: LocalCA | None = None) -> tornado.web.Application:
    """Build the application; the caller owns the log and the blob store (each opened here
    when not given; server.shutdown closes both).

    canonical: redirect page loads under other LAN names of this machine to one host.
    local_ca: the CA (without its key) that /setup offers to devices; no /setup without it.
    """
    hub = Hub(config, ciphertext_log if ciphertext_log is not None else open_log(config),
              blobs if blobs is not None else open_blobs(config))
    blob_api = blob_handlers.BlobApi(hub)
    stream_sessions = stream.StreamSessions(hub)
    routes = [
        (r"/", IndexHandler, {"hub": hub}),
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
