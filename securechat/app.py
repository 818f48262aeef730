"""make_app(config): the Tornado application with its routes and settings, nothing started."""

from __future__ import annotations

import logging

import tornado.web
from tornado.log import access_log

from . import __version__, admin, resources
from .ciphertext_log import CiphertextLog
from .config import Config
from .http_security import NotFoundHandler, SecureHeadersMixin, SecureStaticFileHandler, integrity_table
from .hub import Hub
from .ws import ChatSocket


class IndexHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        sri = self.settings["sri"]
        modules = [name for name in sri if name.startswith("js/") and name != "js/main.js"]
        self.set_header("Cache-Control", "no-cache")
        self.render("index.html", room=self.hub.rooms.default, version=__version__, sri=sri, modules=modules)


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


def make_app(config: Config, ciphertext_log: CiphertextLog | None = None) -> tornado.web.Application:
    """Build the application; the caller owns the log (opened here when not given)."""
    hub = Hub(config, ciphertext_log if ciphertext_log is not None else open_log(config))
    routes = [
        (r"/", IndexHandler, {"hub": hub}),
        (r"/healthz", HealthHandler, {"hub": hub}),
        (r"/ws", ChatSocket, {"hub": hub}),
        *admin.routes(hub, config.admin_token),
    ]
    static_dir = resources.static_dir()
    return tornado.web.Application(
        routes,
        hub=hub,
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
