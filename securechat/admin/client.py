"""The admin commands' side of /api/admin/*: finding the server, and a small blocking HTTP
client with readable errors.

Over https it pins the server's certificate by its SHA-256 fingerprint (from the runtime file,
or `--fingerprint`) and checks the pin *before* the token is sent: a self-signed LAN
certificate has no CA to vouch for it, and the token must never go to anyone else. `--cacert`
trusts a CA instead (with the usual name checks).

Everything the server sends that reaches a terminal is stripped of control characters
(securechat.admin.terminal): a remote server is not trusted with the admin's screen.
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
from .terminal import strip_controls


class AdminError(Exception):
    """Why an admin call failed, in one line for people."""

    exit_code = 1


class ServerChoiceError(AdminError):
    """Several running servers match: the user must say which (a usage error, exit status 2)."""

    exit_code = 2


@dataclass
class AdminClient:
    url: str  # the server's base URL, e.g. https://127.0.0.1:5000/
    token: str = field(repr=False)
    pin: str | None = None  # certificate SHA-256 as "AA:BB:…"; None verifies against CAs
    timeout: float = 10
    cacert: Path | None = None  # the CAs to verify against instead of the system's
    pin_given: bool = False  # the pin came from --fingerprint (not a runtime file): say so
    server: runtime.ServerInfo | None = None  # the runtime file this client was found through

    def status(self) -> dict:
        return self._call("GET", "/api/admin/status")

    def roster(self, room: str | None = None) -> dict:
        return self._call("GET", "/api/admin/roster" + (f"?{urlencode({'room': room})}" if room else ""))

    def rooms(self) -> dict:
        return self._call("GET", "/api/admin/rooms")

    def rotate(self, keep: int | None = None) -> dict:
        body = json.dumps({"keep": keep} if keep is not None else {})
        return self._call("POST", "/api/admin/logs/rotate", body)

    def blobs(self) -> dict:
        return self._call("GET", "/api/admin/blobs")

    def prune_blobs(self, dry_run: bool = False) -> dict:
        return self._call("POST", "/api/admin/blobs/prune", json.dumps({"dry_run": dry_run}))

    def logs(self, since: float | None = None, until: float | None = None, page: int = 1000,
             on_skipped: Callable[[int], None] = lambda n: None, room: str | None = None,
             worker: int | None = None) -> Iterator[str]:
        """Every stored record line (JSON, no newline) from /api/admin/logs, page after page.

        Each page is streamed line by line; the cursor the server hands out leads to the next
        page until a page ends without one. `worker`: that worker's log of a `serve --workers
        N` (status()["workers"] says N); every page names it, whichever worker answers.
        """
        cursor = None
        while True:
            query = {"limit": page, "since": since, "until": until, "room": room, "cursor": cursor,
                     "worker": worker}
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
            raise AdminError(
                f"the certificate of {self.url} is not trusted: {exc.verify_message}; if it is the "
                "server's own certificate, pin it with --fingerprint SHA256 (what `securechat tls show` "
                "prints on the server) or trust its CA with --cacert FILE"
            ) from None
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
        try:
            context = ssl.create_default_context(cafile=self.cacert if self.pin is None else None)
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise AdminError(f"cannot use --cacert {self.cacert}: {why}") from None
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
        if seen != normalise_fingerprint(self.pin):
            if self.pin_given:
                shown = ":".join(seen[i:i + 2] for i in range(0, 64, 2)).upper()
                raise AdminError(f"the server at {self.url} shows certificate SHA-256 {shown}, not the "
                                 "--fingerprint given; refusing to send the admin token")
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
            detail = strip_controls(detail)[:300] if isinstance(detail, str) else None
            raise AdminError(f"the server at {self.url} answered {status}" + (f": {detail}" if detail else ""))
        return body


def _why(exc: Exception) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def normalise_fingerprint(text: str) -> str:
    """64 lowercase hex digits from "AA:BB:…" (what `tls show` prints), plain hex, or with spaces."""
    digits = text.strip().lower()
    for prefix in ("sha256:", "sha-256:", "sha256 ", "sha-256 "):
        if digits.startswith(prefix):
            digits = digits[len(prefix):]
    digits = digits.replace(":", "").replace(" ", "")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits, e.g. AB:CD:… as `securechat tls show` prints it")
    return digits


def find_server(config: Config, *, url: str | None = None, token: str | None = None,
                port: int | None = None, data_dir: Path | None = None, fingerprint: str | None = None,
                cacert: Path | None = None, required: bool = True) -> AdminClient | None:
    """A client for the server to administer: the lookup every admin command shares.

    With url: that server, with the token from --token or the configuration, its certificate
    pinned by `fingerprint`, verified against `cacert`, or pinned to the certificate this
    configuration serves if it is on this machine. Without: the running servers registered in
    this user's runtime dir, narrowed by `port` and `data_dir` when given; exactly one must
    remain. Several raise ServerChoiceError (saying how to choose); none raises AdminError
    when `required`, else returns None (the caller works on the files instead).
    """
    token = token or config.admin_token
    if url is not None:
        if not token:
            raise AdminError("--url needs the server's admin token: pass --token or set SECURECHAT_TOKEN")
        if fingerprint is not None:
            return AdminClient(url, token, fingerprint, pin_given=True)
        if cacert is not None or not url.startswith("https:"):
            return AdminClient(url, token, None, cacert=cacert)
        return AdminClient(url, token, _pin_for(config))
    if fingerprint is not None or cacert is not None:
        raise AdminError("--fingerprint and --cacert go with --url: a server found here is pinned "
                         "through its runtime file")
    scan = runtime.scan()
    matches = runtime.select(scan.servers, port=port, data_dir=data_dir)
    if len(matches) > 1:
        raise ServerChoiceError(choice_message(matches, port=port, data_dir=data_dir))
    if matches:
        info = matches[0]
        return AdminClient(info.admin_url, token or info.token, info.cert_fingerprint, server=info)
    if required:
        raise AdminError(none_message(scan, port=port, data_dir=data_dir))
    return None


def server_line(info: runtime.ServerInfo) -> str:
    """One running server, as the lists in messages show it."""
    import datetime as dt

    since = dt.datetime.fromtimestamp(info.started / 1000).isoformat(sep=" ", timespec="seconds")
    return f"--port {info.port}  {info.scheme:5}  --data-dir {info.data_dir}  (pid {info.pid}, since {since})"


def choice_message(servers: list[runtime.ServerInfo], *, port=None, data_dir=None) -> str:
    criteria = " and ".join(c for c in (port is not None and f"port {port}",
                                         data_dir is not None and f"data dir {data_dir}") if c)
    which = f"{len(servers)} securechat servers" + (f" match {criteria}" if criteria else " are running")
    how = "--data-dir" if port is not None else "--port or --data-dir"
    return f"{which}; choose one with {how}:\n" + "\n".join("  " + server_line(s) for s in servers)


def none_message(scan: runtime.Scan, *, port=None, data_dir=None) -> str:
    criteria = " and ".join(c for c in (port is not None and f"on port {port}",
                                         data_dir is not None and f"using {data_dir}") if c)
    if not scan.servers:
        text = "no running securechat server found" + (f" {criteria}" if criteria else "")
        text += f" (in {scan.directory}); start one with `securechat serve`, or pass --url and --token"
    else:
        text = (f"no running securechat server {criteria}; `securechat status` lists the "
                f"{len(scan.servers)} running: " + ", ".join(f"port {s.port} ({s.data_dir})" for s in scan.servers))
    if scan.problems:
        text += "; " + "; ".join(scan.problems)
    return text


def _pin_for(config: Config) -> str | None:
    # Without a runtime file, trust the certificate this configuration serves, if it is here.
    cert = config.cert or Path(config.data_dir) / "tls" / "cert.pem"
    try:
        return describe_certificate(cert).fingerprint
    except TLSConfigError:
        return None
