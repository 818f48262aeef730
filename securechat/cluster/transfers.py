"""Attachments across machines: blobs and uploads another machine holds, reached through Redis.

Each machine keeps its blobs in its own data dir (the workers of one machine share theirs). A
download that reaches a process without the blob asks every other process on HTTP_CHANNEL for
its first part; one that has it, for the room of the requester's capability, answers with the
blob's size and that part, and every later part is asked of that process alone: one part in
flight per download, so neither Redis's output buffers nor memory hold more than a part.

An upload's requests (start, parts, cancel) must reach the process holding the uploader's
session, which keeps the upload's state. Between workers of one machine they go over loopback
(web/blobs.py); to another machine they go through Redis to that process's inbox, which runs
each as a request to its own loopback port, so the checks and answers are exactly its own.

Events (each a header line and raw bytes, events.with_body; answered with `answer`):
  blob     {r, id, room, off}             the part of blob id from byte off, if room may read it;
                                          answered {size} + the part's bytes
  upload   {r, m, u, h, c} + body         run this attachment request (method m, path u, headers
                                          h, client address c); answered {status, headers} + body
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

log = logging.getLogger("securechat")

EVENTS = ("blob", "upload")
PART_BYTES = 512 * 1024  # one download part through Redis
UPLOAD_PATH = re.compile(r"/api/blobs(/uploads/[0-9a-f]{32})?\Z")
UPLOAD_METHODS = {"POST": "/api/blobs", "PATCH": "uploads", "DELETE": "uploads"}


def read_part(path, offset: int, size: int, expected: int) -> bytes:
    """Bytes [offset, offset + size) of a blob file (the store's worker threads)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != expected:
            raise OSError("the stored attachment is not the size recorded for it")
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class Transfers:
    def __init__(self, cluster):
        self.cluster = cluster
        self.served = 0  # blob parts this process sent to another for its download
        self.fetched = 0  # blob parts this process fetched from another

    # -- asker ---------------------------------------------------------------------------------

    async def blob_part(self, blob_id: str, room: str, offset: int, holder: str | None = None):
        """(holder, blob size, the part from `offset`) of a blob another process stores;
        KeyError: none has it for this room; ConnectionError/TimeoutError: cannot ask now;
        OSError: the holder could not read it."""
        cluster = self.cluster
        answer = await cluster.ask("blob", cluster.next_call(), owner=holder, id=blob_id, room=room, off=offset)
        if answer.refusal is not None:
            raise OSError(answer.refusal.get("message", "the attachment could not be read"))
        self.fetched += 1
        return answer.worker, int(answer.fields["size"]), answer.body or b""

    async def upload_request(self, holder: str, method: str, uri: str, headers: dict, client: str,
                             body: bytes | None) -> tuple[int, dict, bytes]:
        """Have `holder` (on another machine) run an upload's request; (status, headers, body)."""
        cluster = self.cluster
        cluster.proxied += 1
        answer = await cluster.ask("upload", cluster.next_call(), body, owner=holder, m=method, u=uri, h=headers,
                                   c=client)
        if answer.refusal is not None:
            raise ConnectionError(answer.refusal.get("message", "the upload could not be passed on"))
        return int(answer.fields["status"]), dict(answer.fields["headers"]), answer.body or b""

    # -- holder --------------------------------------------------------------------------------

    def on_event(self, event: dict, body: bytes | None) -> None:
        if event["e"] == "blob":
            self._blob(event)
        elif event["e"] == "upload":
            asyncio.get_running_loop().create_task(self._upload(event, body))

    def _blob(self, event: dict) -> None:
        from ..storage.blobs import is_blob_id

        cluster, asker, number = self.cluster, event["w"], event["r"]
        store = cluster.hub.blobs
        blob_id, room, offset = event.get("id"), event.get("room"), event.get("off")
        info = None
        if store is not None and is_blob_id(blob_id) and isinstance(room, str):
            info = store.readable(blob_id, room)
        if info is None or not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= info.size:
            cluster.answer(asker, number, False)
            return
        loop = asyncio.get_running_loop()
        reading = loop.run_in_executor(store.io, read_part, store.path(blob_id), offset,
                                       min(PART_BYTES, info.size - offset), info.size)

        def read(done: asyncio.Future) -> None:
            try:
                data = done.result()
            except OSError as exc:
                log.error("attachment %s could not be read for another process: %s", blob_id, exc)
                cluster.answer(asker, number, True, {"status": 500, "error": "server_error",
                                                     "message": "the stored attachment could not be read"})
                return
            self.served += 1
            cluster.answer(asker, number, True, None, data, size=info.size)

        reading.add_done_callback(read)

    async def _upload(self, event: dict, body: bytes | None) -> None:
        from ..web.blobs import CLIENT_HEADER, CLUSTER_HEADER, PASSED_BACK, PASSED_ON, loopback_fetch

        cluster, asker, number = self.cluster, event["w"], event["r"]
        method, uri, headers = event.get("m"), event.get("u"), event.get("h")
        port = cluster.info.get("inner")
        if (port is None or method not in UPLOAD_METHODS or not isinstance(uri, str) or not UPLOAD_PATH.match(uri)
                or not isinstance(headers, dict) or not cluster.secret):
            cluster.answer(asker, number, True, {"status": 400, "error": "bad_request",
                                                 "message": "not an attachment request this process runs"})
            return
        sent = {name: str(value) for name, value in headers.items() if name in PASSED_ON and name != "Host"}
        sent[CLUSTER_HEADER] = cluster.secret
        sent[CLIENT_HEADER] = str(event.get("c", ""))
        response = await loopback_fetch(port, method, uri, sent, body if method != "DELETE" else None)
        if response.code == 599:
            cluster.answer(asker, number, True, {"status": 503, "error": "unavailable",
                                                 "message": "the upload's process did not answer"})
            return
        back = {name: response.headers[name] for name in PASSED_BACK if name in response.headers}
        cluster.answer(asker, number, True, None, response.body or b"", status=response.code, headers=back)
