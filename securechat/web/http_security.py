"""The hardened HTTP surface: security headers on every response and Subresource Integrity.

A web client trusts whatever its origin serves, so the page pins what it may load: a strict
Content-Security-Policy (no inline code, no other origins) and `integrity` hashes, computed
from the files at start-up, on every script and style the page references.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import tornado.web

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer", "camera", "display-capture", "geolocation", "gyroscope", "hid",
        "magnetometer", "microphone", "midi", "payment", "serial", "usb", "xr-spatial-tracking",
    )
)


# Cached so that every response to one host shares one string: a WebSocket keeps its upgrade
# response's headers for as long as it is open (~250 bytes per connection otherwise). Hosts
# outside limits' allow-list are refused with 421 before this; the bound is for the rest.
@functools.lru_cache(maxsize=64)
def content_security_policy(host: str, secure: bool) -> str:
    """Same-origin everything; the WebSocket only to this very host, on the page's scheme."""
    ws = f"{'wss' if secure else 'ws'}://{host}"
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # blob: only for images decrypted in the page (attachment previews); nothing else.
        "img-src 'self' data: blob:",
        f"connect-src 'self' {ws}",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ])


def security_headers(host: str, secure: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(host, secure),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": PERMISSIONS_POLICY,
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    if secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


def same_origin(origin: str, host: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a browser's Origin header names this server (or a configured extra origin).

    Same origin means the same host:port as the request (after the trusted-proxy rewrite);
    the scheme is not compared, as Tornado's own WebSocket check does not either.
    """
    if origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == host.lower()


class SecureHeadersMixin:
    """Mixed into every handler class, including static files, errors and the WebSocket."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        request = self.request
        # Host is client-supplied, but the policy it shapes only governs that client's page.
        host = "".join(ch for ch in request.host if ch.isalnum() or ch in ".-:[]")
        for name, value in security_headers(host, request.protocol == "https").items():
            self.set_header(name, value)


# Types that nosniff makes matter and that not every Python's mimetypes table knows.
STATIC_TYPES = {".webmanifest": "application/manifest+json", ".png": "image/png", ".svg": "image/svg+xml"}


class SecureStaticFileHandler(SecureHeadersMixin, tornado.web.StaticFileHandler):
    def get_content_type(self) -> str:
        suffix = Path(self.absolute_path).suffix.lower()
        return STATIC_TYPES.get(suffix) or super().get_content_type()

    def parse_url_path(self, url_path: str) -> str:
        # No file name here has a control character; a NUL made os.stat raise (a 500 and a
        # traceback per request) instead of being a bad request.
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in url_path):
            raise tornado.web.HTTPError(400, reason="Bad Request")
        return super().parse_url_path(url_path)


class NotFoundHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


class MisdirectedHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    """421 for a Host this server does not answer to (web/hosts.py), whatever the path."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(421)


def integrity(path: Path) -> str:
    digest = hashlib.sha384(path.read_bytes()).digest()
    return "sha384-" + base64.b64encode(digest).decode("ascii")


def integrity_table(static_dir: Path) -> dict[str, str]:
    """SRI for every script and style, keyed by the path static_url takes ("js/main.js")."""
    return {
        path.relative_to(static_dir).as_posix(): integrity(path)
        for path in sorted(static_dir.rglob("*"))
        if path.suffix in (".js", ".css") and path.is_file()
    }
