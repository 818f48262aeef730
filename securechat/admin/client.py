"""The admin commands' side of /api/admin/*: a small blocking HTTP client with readable errors.

Over https it pins the server's certificate by its SHA-256 fingerprint (from the runtime file)
and checks the pin *before* the token is sent: a self-signed LAN certificate has no CA to
vouch for it, and the token must never go to anyone else.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlencode, urlsplit

from ..config import Config
from ..tls import TLSConfigError, describe_certificate
from . import runtime


class AdminError(Exception):
    """Why an admin call failed, in one line for people."""


@dataclass
class AdminClient:
    url: str  # the server's base URL, e.g. https://127.0.0.1:5000/
    token: str = field(repr=False)
    pin: str | None = None  # certificate SHA-256 as "AA:BB:…"; None verifies against system CAs
    timeout: float = 10

    def status(self) -> dict:
        return self._call("GET", "/api/admin/status")

    def roster(self) -> dict:
        return self._call("GET", "/api/admin/roster")

    def rotate(self, keep: int | None = None) -> dict:
        body = json.dumps({"keep": keep} if keep is not None else {})
        return self._call("POST", "/api/admin/logs/rotate", body)

    def logs(self, since: float | None = None, until: float | None = None, page: int = 1000,
             on_skipped: Callable[[int], None] = lambda n: None) -> Iterator[str]:
        """Every stored record line (JSON, no newline) from /api/admin/logs, page after page.

        Each page is streamed line by line; the cursor the server hands out leads to the next
        page until a page ends without one.
        """
        cursor = None
        while True:
            query = {"limit": page, "since": since, "until": until, "cursor": cursor}
            path = "/api/admin/logs?" + urlencode({k: v for k, v in query.items() if v is not None})
            with self._exchange("GET", path) as response:
                if response.status != 200:
                    self._answer(response.status, response.read())
                cursor = response.getheader("X-Securechat-Next-Cursor")
                skipped = int(response.getheader("X-Securechat-Skipped") or 0)
                for raw in response:
                    yield raw.decode("utf-8").rstrip("\n")
            if skipped:
                on_skipped(skipped)
            if cursor is None:
                return

    def _call(self, method: str, path: str, body: str | None = None) -> dict:
        with self._exchange(method, path, body) as response:
            return self._answer(response.status, response.read())

    @contextmanager
    def _exchange(self, method: str, path: str, body: str | None = None) -> Iterator[http.client.HTTPResponse]:
        """One request; every failure to reach the server, even mid-body, is one AdminError line."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"{self.url} is not an http(s) URL")
        connection = self._connection(parts)
        try:
            connection.connect()
            self._check_pin(connection)
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            connection.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
            yield connection.getresponse()
        except ssl.SSLCertVerificationError as exc:
            raise AdminError(f"the certificate of {self.url} is not trusted: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"no securechat server answers at {self.url} ({_why(exc)})") from None
        finally:
            connection.close()

    def _connection(self, parts) -> http.client.HTTPConnection:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)
        return http.client.HTTPSConnection(parts.hostname, port, timeout=self.timeout, context=self._context())

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.pin is not None:
            # The pin replaces CA and name checks: the exact certificate is what we trust.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _check_pin(self, connection: http.client.HTTPConnection) -> None:
        if self.pin is None or not isinstance(connection, http.client.HTTPSConnection):
            return
        der = connection.sock.getpeercert(binary_form=True)
        seen = hashlib.sha256(der).hexdigest()
        if seen != self.pin.replace(":", "").lower():
            raise AdminError(
                f"the server at {self.url} shows a different certificate than the running "
                "securechat server recorded; refusing to send the admin token"
            )

    def _answer(self, status: int, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status == 401:
            raise AdminError(f"the server at {self.url} refused the admin token; check --token or SECURECHAT_TOKEN")
        if status != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else None
            raise AdminError(f"the server at {self.url} answered {status}" + (f": {detail}" if detail else ""))
        return body


def _why(exc: Exception) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def find_server(config: Config, *, url: str | None = None, token: str | None = None,
                exact: bool = False) -> AdminClient | None:
    """A client for the server to administer, or None when none is running.

    With url: that server, the token from --token or the configuration. Without: the runtime
    file of the server using config.data_dir, else (unless exact) the newest running one.
    """
    token = token or config.admin_token
    if url is not None:
        if not token:
            raise AdminError("--url needs the server's admin token: pass --token or set SECURECHAT_TOKEN")
        return AdminClient(url, token, _pin_for(config) if url.startswith("https:") else None)
    servers = runtime.running_servers(runtime.runtime_dirs(config.data_dir))
    info = runtime.choose(servers, config.data_dir, exact=exact)
    if info is None:
        return None
    return AdminClient(info.admin_url, token or info.token, info.cert_fingerprint)


def _pin_for(config: Config) -> str | None:
    # Without a runtime file, trust the certificate this configuration serves, if it is here.
    cert = config.cert or Path(config.data_dir) / "tls" / "cert.pem"
    try:
        return describe_certificate(cert).fingerprint
    except TLSConfigError:
        return None
