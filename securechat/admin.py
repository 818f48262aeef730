"""Token-protected /api/admin/* handlers: status, roster, rotate the log now.

Thin, like jupyter_server's API handlers: check the bearer token, ask the Hub, write JSON.
The token travels only in the Authorization header (Tornado's access log records URLs, not
headers) and is compared in constant time. No token configured means every call is refused.
"""

from __future__ import annotations

import hmac
import json
import time

import tornado.web
from tornado.ioloop import IOLoop

from . import __version__
from .http_security import SecureHeadersMixin
from .hub import Hub


class AdminHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, hub: Hub, token: str | None) -> None:
        self.hub = hub
        self.token = token

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self._authorized():
            raise tornado.web.HTTPError(401, reason="Unauthorized")

    def _authorized(self) -> bool:
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if self.token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def write_error(self, status_code: int, **kwargs) -> None:
        # send_error cleared the headers before calling this, so they are set here.
        self.set_header("Cache-Control", "no-store")
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="securechat admin"')
        messages = {401: "a valid admin token is required (Authorization: Bearer <token>)"}
        self.finish({"error": messages.get(status_code, self._reason)})

    def check_xsrf_cookie(self) -> None:
        """No cookies are involved: the bearer header is itself the proof a browser cannot forge."""


class StatusHandler(AdminHandler):
    def get(self) -> None:
        log_path = self.hub.log.path
        self.write({
            "version": __version__,
            "started": self.hub.started,
            "uptime": round(time.time() - self.hub.started / 1000, 3),
            "connections": len(self.hub.connections),
            "participants": len(self.hub.rooms.participants()),
            "room": self.hub.rooms.default,
            "tls": self.hub.config.uses_tls,
            "log_file": str(log_path),
            "log_bytes": log_path.stat().st_size if log_path.exists() else 0,
        })


class RosterHandler(AdminHandler):
    def get(self) -> None:
        self.write({"room": self.hub.rooms.default, "participants": [
            {"username": p.username, "fingerprint": p.fingerprint, "sid": p.sid,
             "joined": p.joined, "remote": p.remote}
            for p in self.hub.rooms.participants()
        ]})


class RotateHandler(AdminHandler):
    async def post(self) -> None:
        keep = self._keep()
        # On the loop thread, like every append, so no record lands between rename and reopen.
        rotated = self.hub.log.rotate(keep=keep)
        # Gzip and retention run in the log's worker; answer once the named file exists.
        await IOLoop.current().run_in_executor(None, self.hub.log.wait_for_background)
        self.write({"rotated": rotated.name if rotated else None,
                    "keep": keep if keep is not None else self.hub.config.log_keep})

    def _keep(self) -> int | None:
        raw = self.get_query_argument("keep", None)
        if raw is None and self.request.body:
            try:
                raw = json.loads(self.request.body).get("keep")
            except (ValueError, AttributeError):
                raise tornado.web.HTTPError(400, reason="the body must be a JSON object") from None
        if raw is None:
            return None
        try:
            keep = int(raw)
        except (TypeError, ValueError):
            keep = 0
        if keep < 1 or isinstance(raw, bool):
            raise tornado.web.HTTPError(400, reason="keep must be a whole number of files, at least 1")
        return keep


def routes(hub: Hub, token: str | None) -> list[tuple]:
    options = {"hub": hub, "token": token}
    return [
        (r"/api/admin/status", StatusHandler, options),
        (r"/api/admin/roster", RosterHandler, options),
        (r"/api/admin/logs/rotate", RotateHandler, options),
    ]
