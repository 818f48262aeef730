"""The canonical-host redirect as a handler mixin, for the pages a person opens (see canonical.py)."""

from __future__ import annotations


class CanonicalRedirectMixin:
    """Sends a page load under another LAN name of this machine to the canonical host.

    The application's `canonical` setting is a CanonicalHost, or None (no redirect: plain
    http on loopback, or no LAN address known)."""

    def prepare(self) -> None:
        canonical = self.settings.get("canonical")
        request = self.request
        if canonical is not None:
            target = canonical.redirect(request.method, request.host, request.path, request.query, request.protocol)
            if target is not None:
                self.set_header("Cache-Control", "no-store")
                self.redirect(target)
                return
        super().prepare()
