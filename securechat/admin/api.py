"""Token-protected /api/admin/* handlers: status, rooms, roster, the log in pages, rotate the log now.

Thin, like jupyter_server's API handlers: check the bearer token, ask the Hub, write JSON.
The token travels only in the Authorization header (Tornado's access log records URLs, not
headers) and is compared in constant time. No token configured means every call is refused.
"""

from __future__ import annotations

import hmac
import json
import tempfile
import time
from pathlib import Path

import tornado.web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from .. import __version__
from ..relay import roomname
from ..relay.hub import Hub
from ..storage import blobs as blob_storage
from ..storage import log_pages
from ..web.http_security import SecureHeadersMixin
from .blobs import describe
from .dump import parse_instant


@tornado.web.stream_request_body
class AdminHandler(SecureHeadersMixin, tornado.web.RequestHandler):
    """Streamed, so prepare() runs on the headers alone: the token is checked before a single
    byte of the body is read, and an admin body is at most MAX_BODY bytes."""

    MAX_BODY = 4096

    def initialize(self, hub: Hub, token: str | None) -> None:
        self.hub = hub
        self.token = token
        self.body = b""

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self._authorized():
            raise tornado.web.HTTPError(401, reason="Unauthorized")
        self.request.connection.set_max_body_size(self.MAX_BODY)

    def data_received(self, chunk: bytes) -> None:
        self.body += chunk  # at most MAX_BODY in all: Tornado refuses a longer body

    def json_body(self) -> dict:
        """The body as a JSON object ({} when empty); 400 for anything else. A 4 KiB body can
        still nest 2,000 levels deep, which json.loads answers with RecursionError."""
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):  # ValueError includes a body that is not UTF-8
            data = None
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, reason="the body must be a JSON object")
        return data

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

    def _cluster(self) -> dict:
        """{"cluster": Redis's state} when this is one process of several: while Redis is down,
        the members of other processes are as of when it went down."""
        return {} if self.hub.cluster is None else {"cluster": self.hub.cluster.status()}

    def _room(self) -> str | None:
        """The ?room=NAME filter (None: every room); a name no room can have is a 400."""
        name = self.get_query_argument("room", None)
        if name is not None and roomname.problem(name) is not None:
            # A fixed text: the reason goes into the status line, where the name could not.
            raise tornado.web.HTTPError(400, reason=f"room must be a room name ({roomname.RULE})")
        return name


class StatusHandler(AdminHandler):
    async def get(self) -> None:
        log_path = self.hub.log.path
        answer = {
            "version": __version__,
            "started": self.hub.started,
            "uptime": round(time.time() - self.hub.started / 1000, 3),
            "connections": len(self.hub.connections),
            "participants": len(self.hub.rooms.participants()),
            "room": self.hub.rooms.default,
            "rooms": len(self.hub.rooms),
            "in_default": len(self.hub.rooms.get().members),
            "tls": self.hub.config.uses_tls,
            "log_file": str(log_path),
            "log_bytes": log_path.stat().st_size if log_path.exists() else 0,
            # `serve --workers N`: N logs in this data dir, GET /api/admin/logs?worker=0..N-1.
            "workers": self.hub.config.workers if self.hub.config.worker is not None else 1,
        }
        cluster = self.hub.cluster
        if cluster is not None:
            # The whole cluster: Redis's state and every process with its own figures.
            answer["cluster"] = cluster.status()
            try:
                answer["cluster"]["processes"] = await cluster.workers()
            except (ConnectionError, OSError):
                # Without Redis only the answering process's own figures are known.
                answer["cluster"]["processes"] = [cluster.this_process()]
                answer["cluster"]["problem"] = "Redis is unreachable: only this process's figures are known"
        self.write(answer)


def ordered_rooms(hub: Hub) -> list:
    """The rooms that exist now: the default room first, then by name."""
    return sorted(hub.rooms, key=lambda room: (room.name != hub.rooms.default, room.name))


class RoomsHandler(AdminHandler):
    """GET: the rooms that exist now (someone is in each), with member counts and age."""

    def get(self) -> None:
        now = time.time()
        rooms = self.hub.rooms
        self.write({
            **self._cluster(),
            "default": rooms.default,
            "max_rooms": rooms.max_rooms,
            "max_rooms_per_address": rooms.max_rooms_per_address,
            "rooms": [{"name": room.name, "members": len(room.members), "created": room.created,
                       "age": round(max(0.0, now - room.created / 1000), 3), "default": room.name == rooms.default}
                      for room in ordered_rooms(self.hub)],
        })


class RosterHandler(AdminHandler):
    """GET: who is connected, grouped by room (default room first); ?room=NAME: only that room."""

    def get(self) -> None:
        name = self._room()
        rooms = [self.hub.rooms.get(name)] if name is not None else ordered_rooms(self.hub)
        self.write({**self._cluster(), "room": name, "participants": [
            {"username": p.username, "fingerprint": p.fingerprint, "sid": p.sid,
             "joined": p.joined, "remote": p.remote, "room": room.name}
            for room in rooms for p in room.members.values()
        ]})


class RotateHandler(AdminHandler):
    async def post(self) -> None:
        keep = self._keep()
        # On the loop thread, like every append, so no record lands between rename and reopen.
        rotated = self.hub.log.rotate(keep=keep)
        # Gzip and retention run in the log's worker; answer once the named file exists.
        await IOLoop.current().run_in_executor(None, self.hub.log.wait_for_background)
        answer = {"rotated": rotated.name if rotated else None,
                  "keep": keep if keep is not None else self.hub.config.log_keep}
        if self.hub.cluster is not None:
            # Every process writes its own log: all of them rotate, not just the one answering.
            try:
                answer["others_rotated"] = await self.hub.cluster.rotate_everywhere(keep)
            except ConnectionError:
                raise tornado.web.HTTPError(
                    503, reason="rotated this process's log only: Redis is unreachable, so the other "
                    "processes could not be told") from None
        self.write(answer)

    def _keep(self) -> int | None:
        raw = self.get_query_argument("keep", None)
        if raw is None:
            raw = self.json_body().get("keep")
        if raw is None:
            return None
        try:
            keep = int(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is infinity in JSON
            keep = 0
        if keep < 1 or isinstance(raw, bool):
            raise tornado.web.HTTPError(400, reason="keep must be a whole number of files, at least 1")
        return keep


class LogsHandler(AdminHandler):
    """The ciphertext records as JSON Lines, exactly as stored, a page at a time.

    Streamed in chunks from a worker thread, so neither a large page nor a slow disk holds the
    loop or the memory. When the page is full, X-Securechat-Next-Cursor says where the next
    one starts; no such header means the end of the log was reached. X-Securechat-Cursor is
    always there: where records written later will start (for polling).
    """

    NEXT, RESUME = "X-Securechat-Next-Cursor", "X-Securechat-Cursor"
    DEFAULT_LIMIT, MAX_LIMIT = 1000, 100_000
    # A page is also full at PAGE_BYTES: 100,000 records to 256 recipients each are ~9 GB.
    CHUNK_BYTES, SPOOL_BYTES, PAGE_BYTES = 256 * 1024, 4 * 1024 * 1024, 64 * 1024 * 1024

    async def get(self) -> None:
        since, until = self._time("since"), self._time("until")
        room = self._room()
        limit = self._limit()
        start = self._cursor()
        directory, loop = self._directory(), IOLoop.current()
        # The page is gathered in one walk before the headers go out (log_pages.collect):
        # in memory up to SPOOL_BYTES, beyond that in an unnamed file in the (0700) data dir.
        with tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES, dir=directory) as sink:
            try:
                page = await loop.run_in_executor(None, lambda: log_pages.collect(
                    directory, start, sink, since=since, until=until, limit=limit, max_bytes=self.PAGE_BYTES,
                    room=room))
            except OSError as exc:
                raise tornado.web.HTTPError(503, reason=f"cannot read the ciphertext log now: {exc.strerror}") from None
            self.set_header("Content-Type", "application/x-ndjson; charset=utf-8")
            self.set_header("X-Securechat-Skipped", str(page.problems))
            self.set_header(self.RESUME, log_pages.encode(page.resume))
            if page.next is not None:
                self.set_header(self.NEXT, log_pages.encode(page.next))
            sink.seek(0)
            try:
                while chunk := await loop.run_in_executor(None, sink.read, self.CHUNK_BYTES):
                    self.write(chunk)
                    await self.flush()
            except StreamClosedError:
                pass  # the client went away; nothing to answer

    def _directory(self) -> Path:
        """This process's log, or with ?worker=N the log of worker N of the same `serve
        --workers` (the same data dir: any worker may answer, each writes its own log)."""
        config = self.hub.config
        raw = self.get_query_argument("worker", None)
        if raw is None:
            return config.log_dir
        if config.worker is None:
            raise tornado.web.HTTPError(400, reason="worker: this server is one process, with one log")
        if not raw.isdigit() or not 0 <= int(raw) < config.workers:
            raise tornado.web.HTTPError(400, reason=f"worker must be a worker number, 0 to {config.workers - 1}")
        return config.replace(worker=int(raw)).log_dir

    def _time(self, name: str) -> float | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return None
        try:
            return parse_instant(raw)
        except ValueError:
            raise tornado.web.HTTPError(
                400, reason=f"{name} must be epoch seconds or ISO 8601 (2026-11-25T14:00:00+00:00)") from None

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", None)
        try:
            limit = self.DEFAULT_LIMIT if raw is None else int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= self.MAX_LIMIT:
            raise tornado.web.HTTPError(400, reason=f"limit must be a whole number from 1 to {self.MAX_LIMIT}")
        return limit

    def _cursor(self) -> log_pages.Position | None:
        raw = self.get_query_argument("cursor", None)
        if not raw:
            return None
        try:
            return log_pages.decode(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the cursor is not one this server gave out") from None


class BlobsHandler(AdminHandler):
    """GET: attachment usage (§10.6). The log scan that tells referenced from loose runs in a thread."""

    async def get(self) -> None:
        store = self.hub.blobs
        log_dir = self.hub.config.log_dir
        if store is None:
            blobs, pending = list(blob_storage.scan(self.hub.config.data_dir / blob_storage.DIR_NAME)), []
        else:
            blobs, pending = store.blobs(), store.pending()
        report = await IOLoop.current().run_in_executor(None, blob_storage.usage, blobs, log_dir, pending)
        self.write({"enabled": store is not None, **describe(self.hub.config, report)})


class BlobsPruneHandler(AdminHandler):
    """POST: apply retention now; {"dry_run": true} (or ?dry_run=1) only lists what would go."""

    async def post(self) -> None:
        dry_run = self.get_query_argument("dry_run", "0") in ("1", "true", "yes")
        dry_run = dry_run or bool(self.json_body().get("dry_run"))
        api = self.settings["blob_api"]
        if api.store is None:
            raise tornado.web.HTTPError(409, reason="attachments are turned off on this server")
        result = await IOLoop.current().run_in_executor(None, lambda: api.retention(dry_run=dry_run))
        self.write(result.as_json())


def routes(hub: Hub, token: str | None) -> list[tuple]:
    options = {"hub": hub, "token": token}
    return [
        (r"/api/admin/status", StatusHandler, options),
        (r"/api/admin/rooms", RoomsHandler, options),
        (r"/api/admin/roster", RosterHandler, options),
        (r"/api/admin/logs", LogsHandler, options),
        (r"/api/admin/logs/rotate", RotateHandler, options),
        (r"/api/admin/blobs", BlobsHandler, options),
        (r"/api/admin/blobs/prune", BlobsPruneHandler, options),
    ]
