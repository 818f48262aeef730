"""Room addresses: `/` is the default room, `/r/<name>` any other; invite links and their QR code.

An invite link is the full URL of a room's page. Opened on this computer's own browser
(localhost), the page's address would be useless to anyone else, so when the server knows its
LAN address (the canonical host), invites name that instead — the same rule /setup's QR code
follows.
"""

from __future__ import annotations

import tornado.web

from .. import qr
from ..relay import roomname
from .canonical import is_loopback, split_host, url_host
from .http_security import SecureHeadersMixin


def room_path(name: str, default: str) -> str:
    """The path of a room's page: "/" for the default room, "/r/<name>" for the others."""
    return "/" if name == default else f"/r/{name}"


def invite_origin(handler: tornado.web.RequestHandler) -> str:
    """scheme://host[:port] people elsewhere can open: the request's own, unless that is
    loopback and the server knows its LAN name."""
    request = handler.request
    canonical = handler.settings.get("canonical")
    name, port = split_host(request.host)
    host = canonical.host if canonical is not None and (is_loopback(name) or not name) else name
    return f"{request.protocol}://{url_host(host)}" + (f":{port}" if port else "")


def shown_name(text: str, limit: int = 48) -> str:
    """A refused name as it may appear on a page: printable, and not a screenful."""
    printable = "".join(ch if ch.isprintable() else f"U+{ord(ch):04X}" for ch in text)
    return printable if len(printable) <= limit else printable[:limit] + "…"


class InviteQRCode(SecureHeadersMixin, tornado.web.RequestHandler):
    """GET /r/<name>/qr.svg: the room's invite link as a QR code (an image: no script runs)."""

    def initialize(self, default_room: str) -> None:
        self.default_room = default_room

    def get(self, name: str) -> None:
        if roomname.problem(name) is not None:
            raise tornado.web.HTTPError(404)
        link = invite_origin(self) + room_path(name, self.default_room)
        self.set_header("Content-Type", "image/svg+xml")
        # The link depends on the Host the page was opened under.
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Vary", "Host")
        self.write(qr.svg(link, f"QR code of {link}"))


def routes(default_room: str) -> list[tuple]:
    return [(r"/r/([^/]*)/qr\.svg", InviteQRCode, {"default_room": default_room})]
