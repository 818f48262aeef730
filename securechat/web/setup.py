"""/setup: how a device comes to trust the local CA, so it never sees a certificate warning.

The page offers the CA certificate in the forms devices install (DER for Android, desktops and
Firefox; a configuration profile for iPhone and iPad), its fingerprint to compare with the
server's terminal, short steps per platform, and a QR code that opens the page on a phone.
Registered only when the server uses the local CA (`serve --tls` without --cert or
--self-signed); otherwise these paths are 404 like any other.
"""

from __future__ import annotations

import ipaddress

import tornado.web

from .. import qr
from ..tls import LocalCA, profiles
from .canonical import is_loopback, split_host, url_host
from .http_security import SecureHeadersMixin
from .redirect import CanonicalRedirectMixin

CRT_PATH = f"/setup/{profiles.CRT_NAME}"
PROFILE_PATH = f"/setup/{profiles.PROFILE_NAME}"

# Which instructions to open first, from the User-Agent; every section is on the page anyway.
# iPadOS Safari says "Macintosh", so the iPhone/iPad steps always come near the top.
_PLATFORMS = (("ios", ("iPhone", "iPad", "iPod")), ("android", ("Android",)), ("windows", ("Windows",)),
              ("mac", ("Macintosh",)), ("linux", ("Linux", "X11", "CrOS")))


def platform(user_agent: str) -> str | None:
    for name, markers in _PLATFORMS:
        if any(marker in user_agent for marker in markers):
            return name
    return None


def fingerprint_lines(fingerprint: str, per_line: int = 8) -> list[str]:
    """`AB:CD:…` in lines of 8 bytes, so a phone screen shows it whole, in the terminal's order."""
    parts = fingerprint.split(":")
    return [":".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line)]


class SetupPage(CanonicalRedirectMixin, SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, ca: LocalCA) -> None:
        self.ca = ca

    def get(self) -> None:
        canonical = self.settings.get("canonical")
        name, port = split_host(self.request.host)
        # A phone cannot open this computer's localhost: the QR code names the LAN address.
        host = canonical.host if canonical is not None and (is_loopback(name) or not name) else name
        netloc = url_host(host) + (f":{port}" if port else "")
        user_agent = self.request.headers.get("User-Agent", "")
        self.set_header("Cache-Control", "no-cache")
        self.render(
            "setup.html",
            ca=self.ca,
            fingerprint=fingerprint_lines(self.ca.fingerprint),
            sha1=self.ca.sha1_fingerprint,
            names=self.ca.permitted_names,
            ipv4=[str(n) for n in self.ca.permitted_networks if isinstance(n, ipaddress.IPv4Network)],
            ipv6=[str(n) for n in self.ca.permitted_networks if isinstance(n, ipaddress.IPv6Network)],
            setup_url=f"{self.request.protocol}://{netloc}/setup",
            chat_url=f"{self.request.protocol}://{netloc}/",
            qr_svg=qr.svg(f"{self.request.protocol}://{netloc}/setup",
                          f"QR code of {self.request.protocol}://{netloc}/setup"),
            platform=platform(user_agent),
            firefox="Firefox/" in user_agent,
            crt_path=CRT_PATH,
            crt_name=profiles.CRT_NAME,
            profile_path=PROFILE_PATH,
            sri=self.settings["sri"],
        )


class _Download(SecureHeadersMixin, tornado.web.RequestHandler):
    content_type = ""
    filename = ""

    def initialize(self, ca: LocalCA) -> None:
        self.ca = ca

    def body(self) -> bytes:
        raise NotImplementedError

    def get(self) -> None:
        self._headers_for_download()
        self.write(self.body())

    def head(self) -> None:
        self._headers_for_download()
        self.set_header("Content-Length", str(len(self.body())))

    def _headers_for_download(self) -> None:
        self.set_header("Content-Type", self.content_type)
        self.set_header("Content-Disposition", f'attachment; filename="{self.filename}"')
        self.set_header("Cache-Control", "no-cache")


class CACertificate(_Download):
    content_type = profiles.CRT_TYPE
    filename = profiles.CRT_NAME

    def body(self) -> bytes:
        return self.ca.der()


class AppleProfile(_Download):
    content_type = profiles.PROFILE_TYPE
    filename = profiles.PROFILE_NAME

    def body(self) -> bytes:
        return profiles.mobileconfig(self.ca)


def routes(ca: LocalCA | None) -> list:
    if ca is None:
        return []
    return [
        (r"/setup", SetupPage, {"ca": ca}),
        (CRT_PATH.replace(".", r"\."), CACertificate, {"ca": ca}),
        (PROFILE_PATH.replace(".", r"\."), AppleProfile, {"ca": ca}),
    ]
