"""make_app(config): the Tornado application with its routes and settings, nothing started."""

from __future__ import annotations

import tornado.web

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
        websocket_max_message_size=config.max_frame_bytes,
        websocket_ping_interval=config.ping_interval,
        websocket_ping_timeout=config.ping_timeout,
        xsrf_cookies=False,
    )
