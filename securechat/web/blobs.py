"""The attachment endpoints (docs/PROTOCOL.md §10.5): start an upload, send it in parts,
cancel it, download a blob.

Under `serve --workers` (or several processes sharing Redis) a request may reach a worker
that does not hold the session whose capability it carries: the cluster knows every member's
capability by its digest, so a download is served from the shared blob directory wherever it
lands, and an upload's requests (start, parts, cancel) are passed on over loopback to the
worker holding the uploader, which keeps the upload's state (its file and running hash).

Every request proves it comes from a joined session with that session's capability
(`Authorization: Bearer <token>` from its welcome), checked in prepare(): a stranger's upload
is refused before one byte of its body is read. Parts are streamed to disk piece by piece in
the store's worker threads and downloads are streamed back from disk, so a 25 MiB transfer never
sits in memory and the event loop that relays chat frames never waits for the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import hmac

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from ..relay.hub import Grant, Hub
from ..relay.limits import SlidingWindow
from ..storage import blobs as storage
from ..storage.blobs import BlobError, BlobStore, Upload
from .http_security import SecureHeadersMixin
from .limits import allow_body

log = logging.getLogger("securechat")

MAX_PART_BYTES = 4 * 1024 * 1024  # per PATCH; a browser sends 1 MiB parts
PART_BODY_TIMEOUT = 120.0  # seconds for one part's body, enough for 4 MiB at 300 kbit/s
MAX_PENDING_PER_SESSION = 4
UPLOAD_IDLE_SECONDS = 600.0
READ_BYTES = 256 * 1024
WRITE_BYTES = 256 * 1024
HOUSEKEEPING_SECONDS = 60.0
PRUNE_EVERY_SECONDS = 3600.0
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,15})\Z")

# An attachment request passed on to the worker holding its session (see the docstring).
CLUSTER_HEADER = "Securechat-Cluster"  # the cluster's secret: from another worker
CLIENT_HEADER = "Securechat-Client"  # the address the request came from, for the upload limit
PASSED_ON = ("Authorization", "Upload-Length", "Upload-Offset", "Content-Type", "Host", "Origin")
PASSED_BACK = ("Content-Type", "Location", "WWW-Authenticate", "Retry-After")

STATUS = {"unavailable": 503, "too_large": 413, "quota_exceeded": 507, "no_space": 507, "bad_offset": 409, "busy": 409,
          "not_found": 404, "rate_limited": 429, "too_many_uploads": 429, "no_capability": 401,
          "length_required": 411, "bad_request": 400, "attachments_off": 404, "server_error": 500}



async def loopback_fetch(port: int, method: str, uri: str, headers: dict, body: bytes | None):
    """Run an attachment request on a process of this machine, by its loopback port (the
    cluster's proxies: another worker here, or the process Redis passed a request to). Errors
    come back as responses (599: it did not answer)."""
    request = HTTPRequest(f"http://127.0.0.1:{port}{uri}", method=method, headers=headers, body=body,
                          allow_nonstandard_methods=True, follow_redirects=False,
                          decompress_response=False, request_timeout=PART_BODY_TIMEOUT)
    client = AsyncHTTPClient(force_instance=True, max_body_size=MAX_PART_BYTES + 1024 * 1024)
    try:
        return await client.fetch(request, raise_error=False)
    finally:
        client.close()

class BlobApi:
    """What the handlers share: the hub (capabilities), the store, the per-address limit."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.store: BlobStore | None = hub.blobs
        self.starts = SlidingWindow(hub.config.attachments_uploads_per_minute, 60.0)
        self._last_prune = time.monotonic() - PRUNE_EVERY_SECONDS  # the first tick prunes
        self._pruning = False

    async def housekeeping(self) -> None:
        """Drop abandoned uploads; hourly, apply retention (the log scan runs in a thread)."""
        if self.store is None:
            return
        self.store.expire_idle(time.time(), UPLOAD_IDLE_SECONDS)
        self.starts.forget_idle(time.monotonic())
        if self._pruning or time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        if not self.store.blobs():
            # Retention deletes only stored blobs: with none, the scan of the whole log (a
            # second of CPU per 80 MiB) would find nothing to do.
            self._last_prune = time.monotonic()
            return
        self._pruning = True
        try:
            result = await IOLoop.current().run_in_executor(self.store.maintenance, self.retention)
            if result.deleted:
                log.info("attachments: deleted %d blob(s), %d bytes, past retention",
                         len(result.deleted), result.freed_bytes)
        except Exception:
            log.exception("attachment retention failed")
        finally:
            self._pruning = False
            self._last_prune = time.monotonic()

    def retention(self, dry_run: bool = False) -> storage.PruneResult:
        config = self.hub.config
        log_dirs = config.log_dir
        if config.worker is not None:
            # The blobs are shared: what any worker's log refers to is kept.
            log_dirs = sorted(path for path in (config.log_dir.parent).iterdir() if path.is_dir())
        return storage.apply_retention(self.store, log_dirs, retention_days=config.attachments_retention_days,
                                       grace_seconds=config.attachments_grace_seconds, dry_run=dry_run)


class ApiError(tornado.web.HTTPError):
    def __init__(self, code: str, message: str, **details):
        super().__init__(STATUS[code], reason=None)
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(cls, error: BlobError) -> "ApiError":
        return cls(error.code if error.code in STATUS else "server_error", error.message, **error.details)


class BlobHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    def initialize(self, api: BlobApi) -> None:
        self.api = api
        self.store = api.store
        self.grant: Grant | None = None
        self.elsewhere: str | None = None  # the worker holding the session, when not us

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        """No cookies: the capability header is itself the proof a browser cannot forge."""

    def authorize(self) -> Grant:
        if self.store is None:
            raise ApiError("attachments_off", "attachments are turned off on this server")
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer"
        grant = self.api.hub.grant(token.strip()) if bearer else None
        cluster = self.api.hub.cluster
        if grant is None and bearer and cluster is not None:
            held = cluster.remote_grant(token.strip())
            if held is not None:
                self.elsewhere = held.connection.worker
                grant = Grant(token.strip(), held, getattr(held, "room", "") or self.api.hub.rooms.default)
        if grant is None:
            raise ApiError("no_capability", "join the chat first: attachments need the capability "
                           "your session's welcome carries (Authorization: Bearer <token>)")
        self.grant = grant
        return grant

    def client_address(self) -> str:
        """Who sent this: for a request another worker passed on, the address it came from."""
        cluster = self.api.hub.cluster
        proof = self.request.headers.get(CLUSTER_HEADER)
        if cluster is not None and cluster.secret and proof and hmac.compare_digest(proof, cluster.secret):
            return self.request.headers.get(CLIENT_HEADER, "")
        return self.request.remote_ip or ""

    async def pass_on(self, body: bytes | None = None) -> None:
        """Have the worker holding the session answer this request, and give its answer."""
        cluster = self.api.hub.cluster
        try:
            port = await cluster.inner_address(self.elsewhere)
        except (ConnectionError, OSError) as exc:
            raise ApiError("unavailable", "the server process holding your session cannot be reached now") from exc
        if not cluster.secret:
            raise ApiError("unavailable", "the server process holding your session cannot be reached now")
        headers = {name: value for name in PASSED_ON if (value := self.request.headers.get(name)) is not None}
        if port is None:
            # On another machine: through Redis, to that process, which runs it on its loopback port.
            try:
                status, answered, data = await cluster.transfers.upload_request(
                    self.elsewhere, self.request.method, self.request.uri, headers, self.client_address(), body)
            except KeyError:
                raise ApiError("no_capability", "your session ended") from None
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                raise ApiError("unavailable", "the server process holding your session cannot be reached now") from exc
            self.set_status(status)
            for name, value in answered.items():
                self.set_header(name, value)
            self.finish(data or None)
            return
        headers[CLUSTER_HEADER] = cluster.secret
        headers[CLIENT_HEADER] = self.client_address()
        cluster.proxied += 1
        response = await loopback_fetch(port, self.request.method, self.request.uri, headers, body)
        if response.code == 599:
            raise ApiError("unavailable", "the server process holding your session did not answer")
        self.set_status(response.code)
        for name in PASSED_BACK:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body or None)

    def header_number(self, name: str, missing: str = "bad_request") -> int:
        raw = self.request.headers.get(name)
        if raw is None:
            raise ApiError(missing, f"the {name} header is required")
        if not _DECIMAL.match(raw.strip()):
            raise ApiError("bad_request", f"{name} must be a whole number of bytes")
        return int(raw.strip())

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Cache-Control", "no-store")
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, ApiError):
            if error.code == "no_capability":
                self.set_header("WWW-Authenticate", 'Bearer realm="securechat attachments"')
            if error.code == "rate_limited":
                self.set_header("Retry-After", "60")
            self.finish({"error": error.code, "message": error.message, **error.details})
            return
        self.finish({"error": "server_error" if status_code >= 500 else "bad_request",
                     "message": self._reason})


class StartHandler(BlobHandler):
    """POST /api/blobs with `Upload-Length: <blob bytes>`: reserve the space, name the upload."""

    async def post(self) -> None:
        grant = self.authorize()
        if self.elsewhere is not None:
            await self.pass_on(b"")
            return
        size = self.header_number("Upload-Length")
        if not self.api.starts.allow(self.client_address(), time.monotonic()):
            raise ApiError("rate_limited", "too many uploads from your address; wait a minute")
        if len(self.store.pending(grant.token)) >= MAX_PENDING_PER_SESSION:
            raise ApiError("too_many_uploads", f"at most {MAX_PENDING_PER_SESSION} uploads at once per session")
        if self.store.shared:
            # The other workers' blobs count against the quota too.
            await IOLoop.current().run_in_executor(self.store.io, self.store.rescan)
        try:
            upload = self.store.begin(size, room=grant.room, owner=grant.token, now=time.time())
        except BlobError as exc:
            raise ApiError.of(exc) from None
        cluster = self.api.hub.cluster
        if cluster is not None:
            # So are the other processes' uploads in progress: reserved in Redis first, then the
            # disk read again and everything checked (cluster/bridge.py RESERVE_UPLOAD says why
            # that order). Two starts at once on two workers cannot both fit where one does.
            others = await cluster.reserve_upload(upload)
            try:
                if self.store.shared:
                    await IOLoop.current().run_in_executor(self.store.io, self.store.rescan)
                self.store.check_quota(upload, others or 0)
            except BlobError as exc:
                self.store.abort(upload)
                raise ApiError.of(exc) from None
            except BaseException:
                self.store.abort(upload)
                raise
        self.set_status(201)
        self.set_header("Location", f"/api/blobs/uploads/{upload.id}")
        self.finish({"upload": upload.id, "offset": 0, "max_part_bytes": MAX_PART_BYTES})


@tornado.web.stream_request_body
class PartHandler(BlobHandler):
    """PATCH /api/blobs/uploads/<upload> with `Upload-Offset`: the next part; DELETE cancels."""

    upload: Upload | None = None
    _receiving = False
    _failure: BlobError | None = None
    _write: asyncio.Future | None = None
    _pending: list[bytes]
    _pending_bytes = 0

    def prepare(self) -> None:
        grant = self.authorize()
        if self.elsewhere is not None:
            self._pending = []
            if self.request.method == "PATCH":
                # Known to the cluster as a member's capability: its part may be read, to pass on.
                length = self.header_number("Content-Length", missing="length_required")
                if length == 0 or length > MAX_PART_BYTES:
                    raise ApiError("too_large", f"a part is 1 to {MAX_PART_BYTES} bytes")
                allow_body(self, length, timeout=PART_BODY_TIMEOUT)
            return
        upload_id = self.path_args[0] if self.path_args else ""
        self.upload = self.store.upload(upload_id, grant.token)
        if self.upload is None:
            raise ApiError("not_found", "no such upload (finished, cancelled or expired)")
        if self.request.method != "PATCH":
            return
        upload = self.upload
        if upload.busy:
            raise ApiError("busy", "another part of this upload is still arriving")
        offset = self.header_number("Upload-Offset")
        if offset != upload.received:
            raise ApiError("bad_offset", f"the upload continues at byte {upload.received}", offset=upload.received)
        if "Content-Length" not in self.request.headers:
            raise ApiError("length_required", "send each part with a Content-Length")
        length = self.header_number("Content-Length", missing="length_required")
        if length == 0 or length > min(MAX_PART_BYTES, upload.size - upload.received):
            raise ApiError("too_large", f"a part is 1 to {MAX_PART_BYTES} bytes and ends at the "
                           f"announced size ({upload.size})")
        # The one route that takes a large body, and only now that we know whose it is.
        allow_body(self, length, timeout=PART_BODY_TIMEOUT)
        upload.busy = True
        upload.begin_part()
        self._pending = []
        self._receiving = True

    async def data_received(self, chunk: bytes) -> None:
        if self.elsewhere is not None:
            self._pending.append(chunk)
            return
        if not self._receiving or self._failure is not None:
            return  # a refused request or a failed part: the rest of the body is discarded
        # Tornado hands the body over in 64 KiB pieces; one trip to a worker per 256 KiB.
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= WRITE_BYTES:
            await self._write_pending()

    async def _write_pending(self) -> None:
        upload, data = self.upload, b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        if not data:
            return
        self._write = IOLoop.current().run_in_executor(self.store.io, self.store.write, upload, data)
        try:
            await self._write
        except BlobError as exc:
            self._failure = exc
        except OSError as exc:
            log.error("could not write an attachment upload: %s", exc)
            self._failure = BlobError("server_error", "the server could not store this part")
        upload.last_active = time.time()

    async def patch(self, upload_id: str) -> None:
        if self.elsewhere is not None:
            await self.pass_on(b"".join(self._pending))
            return
        upload = self.upload
        if self._failure is None:
            await self._write_pending()
        self._receiving = False
        if self._failure is not None or self.api.hub.grant(self.grant.token) is None:
            upload.rollback_part()
            upload.busy = False
            failure = self._failure or BlobError("no_capability", "your session ended during the upload")
            if failure.code in ("no_space", "server_error", "no_capability") or upload.cancelled:
                self.store.abort(upload)
            raise ApiError.of(failure)
        upload.busy = False
        if upload.cancelled:
            self.store.abort(upload)
            raise ApiError("not_found", "the upload was cancelled")
        if upload.received < upload.size:
            self.finish({"offset": upload.received})
            return
        try:
            info = await IOLoop.current().run_in_executor(self.store.io, self.store.finish, upload)
        except OSError as exc:
            log.error("could not store a finished attachment: %s", exc)
            self.store.abort(upload)
            raise ApiError("server_error", "the server could not store the file") from None
        self.set_status(201)
        self.finish({"id": info.id, "size": info.size})

    async def delete(self, upload_id: str) -> None:
        if self.elsewhere is not None:
            await self.pass_on()
            return
        upload = self.upload
        if upload.busy:
            upload.cancelled = True  # the part in flight ends it (its request is being aborted)
        else:
            self.store.abort(upload)
        self.set_status(204)
        self.finish()

    def on_connection_close(self) -> None:
        """The client went away mid-part: undo the part once its last write is done."""
        if not self._receiving:
            return
        self._receiving = False
        upload, write = self.upload, self._write

        async def undo() -> None:
            if write is not None:
                try:
                    await write
                except Exception:
                    pass
            upload.rollback_part()
            upload.busy = False
            if upload.cancelled:
                self.store.abort(upload)

        IOLoop.current().add_callback(undo)


class DownloadHandler(BlobHandler):
    """GET /api/blobs/<id>: the blob, streamed from disk, to members of a room it was sent in."""

    async def get(self, blob_id: str) -> None:
        grant = self.authorize()
        info = self.store.readable(blob_id, grant.room)
        if info is None and self.api.hub.cluster is not None:
            await self.from_elsewhere(blob_id, grant.room)
            return
        # One answer for "no such blob" and "not your room": nothing to learn by probing.
        if info is None:
            raise ApiError("not_found", "no such attachment here (never uploaded, or deleted)")
        try:
            handle = open(self.store.path(blob_id), "rb")
        except FileNotFoundError:
            raise ApiError("not_found", "no such attachment here (never uploaded, or deleted)") from None
        loop = IOLoop.current()
        if os.fstat(handle.fileno()).st_size != info.size:
            handle.close()
            log.error("attachment %s on disk is not the size recorded for it", blob_id)
            raise ApiError("server_error", "the stored attachment is damaged")
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(info.size))
            self.set_header("Content-Disposition", "attachment")
            left = info.size
            while left > 0:
                data = await loop.run_in_executor(self.store.io, handle.read, min(READ_BYTES, left))
                if not data:
                    break
                left -= len(data)
                self.write(data)
                await self.flush()
        except StreamClosedError:
            return  # the reader went away (cancelled)
        finally:
            handle.close()


    async def from_elsewhere(self, blob_id: str, room: str) -> None:
        """A blob another machine stores (its own data dir): fetched from it through Redis a
        part at a time (cluster/transfers.py) and streamed on as it comes."""
        transfers = self.api.hub.cluster.transfers
        try:
            holder, size, data = await transfers.blob_part(blob_id, room, 0)
        except KeyError:
            raise ApiError("not_found", "no such attachment here (never uploaded, or deleted)") from None
        except (ConnectionError, asyncio.TimeoutError):
            raise ApiError("unavailable", "the server process storing this attachment cannot be reached now") from None
        except OSError:
            raise ApiError("server_error", "the stored attachment could not be read") from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(size))
        self.set_header("Content-Disposition", "attachment")
        sent = 0
        try:
            while True:
                if not data and sent < size:
                    raise OSError("the attachment ended early")
                sent += len(data)
                self.write(data)
                await self.flush()
                if sent >= size:
                    return
                _, _, data = await transfers.blob_part(blob_id, room, sent, holder)
        except StreamClosedError:
            return  # the reader went away
        except (KeyError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            # Too late for an error answer: cut the response short, which the reader notices.
            log.warning("attachment %s: the download from another process broke off after %d of %d bytes (%s)",
                        blob_id, sent, size, exc or type(exc).__name__)
            self.request.connection.close()


def routes(api: BlobApi) -> list[tuple]:
    options = {"api": api}
    return [
        (r"/api/blobs", StartHandler, options),
        (r"/api/blobs/uploads/([0-9a-f]{32})", PartHandler, options),
        (r"/api/blobs/([0-9a-f]{64})", DownloadHandler, options),
    ]
