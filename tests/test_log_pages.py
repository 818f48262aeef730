"""The ciphertext log in pages: cursors that survive rotation, and GET /api/admin/logs."""

from __future__ import annotations

import io
import json
import random

import pytest

from securechat.config import Config
from securechat.storage import log_pages
from securechat.storage.ciphertext_log import CiphertextLog, LogRecord, read_log
from securechat.storage.log_pages import Position, collect, decode, encode

TOKEN = "log-pages-admin-token-0123456789"


def stored(directory) -> list[str]:
    return [r.raw for r in read_log(directory) if isinstance(r, LogRecord)]


def page(directory, cursor, limit=3, since=None, until=None):
    """One page as the handler serves it: its lines, the next cursor (or None), the resume cursor."""
    start = decode(cursor) if cursor else None
    sink = io.BytesIO()
    gathered = collect(directory, start, sink, since=since, until=until, limit=limit)
    got = sink.getvalue().decode().splitlines()
    assert len(got) == gathered.records
    return got, encode(gathered.next) if gathered.next else None, encode(gathered.resume)


def append(log: CiphertextLog, first: int, count: int) -> None:
    for n in range(first, first + count):
        log.append({"event": "msg", "t": 1_700_000_000_000 + n, "id": f"m{n}"})


@pytest.mark.parametrize("background", [False, True])
def test_every_record_exactly_once_across_rotations_between_pages(tmp_path, background):
    directory = tmp_path / "log"
    log = CiphertextLog(directory, keep=50, fsync="never", gzip_in_background=background)
    try:
        append(log, 0, 7)
        seen, cursor, n = [], None, 7
        # Between pages: rotate mid-live-file, rotate twice, append, rotate an empty file;
        # a page that reached the end is resumed from its X-Securechat-Cursor later.
        for step in range(12):
            got, following, resume = page(directory, cursor)
            seen += got
            cursor = following or resume
            if step % 3 == 0:
                log.rotate()
            if step % 4 == 1:
                append(log, n, 2)
                log.rotate()
                n += 2
            if step % 2 == 0:
                append(log, n, 3)
                n += 3
        while cursor is not None:
            got, cursor, _ = page(directory, cursor)
            seen += got
        log.wait_for_background()
        assert seen == stored(directory) and len(seen) == n
        assert [json.loads(line)["id"] for line in seen] == [f"m{i}" for i in range(n)]
        assert list(directory.glob("*.gz"))
    finally:
        log.close()


def test_a_cursor_into_a_file_retention_deleted_goes_on_with_the_next(tmp_path):
    directory = tmp_path / "log"
    with CiphertextLog(directory, keep=1, fsync="never", gzip_in_background=False) as log:
        append(log, 0, 5)
        got, cursor, _ = page(directory, None, limit=2)
        log.rotate()          # the page's file is now the only rotated one...
        append(log, 5, 2)
        log.rotate()          # ...and now deleted: keep=1
        append(log, 7, 1)
        rest = []
        while cursor:
            more, cursor, _ = page(directory, cursor, limit=2)
            rest += more
    ids = [json.loads(line)["id"] for line in got + rest]
    assert ids == ["m0", "m1", "m5", "m6", "m7"]  # m2-m4 are gone with their file; nothing repeats


def test_an_appended_record_lands_on_the_next_page_not_twice(tmp_path):
    directory = tmp_path / "log"
    with CiphertextLog(directory, fsync="never") as log:
        append(log, 0, 3)
        first, cursor, _ = page(directory, None, limit=3)
        assert cursor is not None
        empty, end, resume = page(directory, cursor, limit=3)
        assert (empty, end, resume) == ([], None, cursor)
        append(log, 3, 1)
        (late,), end, resume = page(directory, cursor, limit=3)
        log.rotate()
        nothing, _, _ = page(directory, resume)
    assert json.loads(late)["id"] == "m3" and end is None and nothing == []


def test_time_window_and_a_torn_live_line_waits(tmp_path):
    directory = tmp_path / "log"
    with CiphertextLog(directory, fsync="never") as log:
        append(log, 0, 10)
    with (directory / "ciphertext.jsonl").open("a") as fh:
        fh.write('{"event":"msg","t":')  # a write in progress
    got, cursor, _ = page(directory, None, limit=100, since=1_700_000_000.003, until=1_700_000_000.006)
    assert [json.loads(line)["id"] for line in got] == ["m3", "m4", "m5"] and cursor is None


@pytest.mark.parametrize("cursor", ["", "x", encode(Position(None, 0, 0))[:-2] + "!!",
                                    encode(Position("../../etc/passwd", 0, 0)),
                                    encode(Position(None, -1, 0)), encode(Position("20260101T000000000000Z", 1, 1,
                                                                                    after="20260101T000000000000Z"))])
def test_a_forged_cursor_is_refused(cursor):
    with pytest.raises(ValueError):
        decode(cursor)


def test_cursor_round_trip():
    for position in (Position("20261125T101010123456Z", 42, 3),
                     Position(None, 7, 1, after="20261125T101010123456Z", first="ab" * 16), Position(None, 0, 0)):
        assert decode(encode(position)) == position


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", log_keep=50, admin_token=TOKEN)


async def get(http_client, base_url, query="", token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await http_client.fetch(f"{base_url}/api/admin/logs{query}", headers=headers, raise_error=False)


@pytest.mark.gen_test(timeout=30)
async def test_paging_over_http_with_a_rotation_between_pages(http_client, base_url, hub, config):
    append(hub.log, 0, 5)
    lines, cursor, pages = [], "", 0
    while True:
        response = await get(http_client, base_url, f"?limit=2&cursor={cursor}")
        assert response.code == 200 and response.headers["Content-Type"].startswith("application/x-ndjson")
        lines += response.body.decode().splitlines()
        pages += 1
        cursor = response.headers.get("X-Securechat-Next-Cursor")
        if cursor is None:
            break
        if pages == 1:
            hub.log.rotate()  # the first page's file is rotated away under the cursor
            append(hub.log, 5, 3)
        if pages == 3:
            append(hub.log, 8, 1)
            hub.log.rotate()
    hub.log.wait_for_background()
    assert lines == stored(config.log_dir)  # byte-identical to the files, each record once
    assert [json.loads(line)["id"] for line in lines] == [f"m{i}" for i in range(9)]


@pytest.mark.gen_test(timeout=30)
async def test_logs_need_the_token_and_sane_parameters(http_client, base_url, hub):
    append(hub.log, 0, 3)
    response = await get(http_client, base_url, token=None)
    assert response.code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"m0" not in response.body
    assert (await get(http_client, base_url, token="wrong-token-wrong-token")).code == 401
    for query in ("?limit=0", "?limit=x", "?since=yesterday-ish", "?cursor=forged", "?until=nan"):
        response = await get(http_client, base_url, query)
        assert response.code == 400 and json.loads(response.body)["error"], query
    window = await get(http_client, base_url, "?since=1700000000.001&until=2023-11-14T22:13:20.002%2B00:00")
    assert [json.loads(line)["id"] for line in window.body.decode().splitlines()] == ["m1"]


# -- exactly once: a page and its cursor come from one walk --------------------------------------
# Before, a page was counted in one walk (for the cursor header) and streamed in a second one.
# When retention deleted a file in between, the second walk went past the end the first had
# found, and the next page, starting at that end, served the same records again.


def big(log: CiphertextLog, first: int, count: int) -> None:
    for n in range(first, first + count):
        log.append({"event": "msg", "t": 1_700_000_000_000 + n, "id": f"m{n}", "ct": "c" * 900})


@pytest.mark.gen_test(timeout=60)
async def test_a_page_read_slowly_while_retention_deletes_files_is_served_once(http_client, base_url, http_port, hub,
                                                                               config):
    import asyncio
    import socket

    async def in_thread(function, *args):
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    for batch in range(3):  # three rotated files of ~2 MB, then a live one
        big(hub.log, batch * 2000, 2000)
        hub.log.rotate()
    big(hub.log, 6000, 50)
    await in_thread(hub.log.wait_for_background)

    def start_slow_page() -> tuple[socket.socket, bytes]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that takes its time
        sock.settimeout(30)
        sock.connect(("127.0.0.1", http_port))
        sock.sendall(f"GET /api/admin/logs?limit=3000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        return sock, head

    def finish(sock: socket.socket, data: bytes) -> bytes:
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data

    sock, start = await in_thread(start_slow_page)
    # While the page is on its way, a rotation with keep=1 deletes every older file.
    hub.log.rotate(keep=1)
    await in_thread(hub.log.wait_for_background)
    reply = await in_thread(finish, sock, start)
    head, _, body = reply.partition(b"\r\n\r\n")
    cursor = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"x-securechat-next-cursor"))
    first = [json.loads(line)["id"] for line in _dechunk(body).decode().splitlines()]
    rest = []
    while cursor:
        response = await get(http_client, base_url, f"?limit=1000&cursor={cursor}")
        rest += [json.loads(line)["id"] for line in response.body.decode().splitlines()]
        cursor = response.headers.get("X-Securechat-Next-Cursor")
    assert first == [f"m{n}" for n in range(3000)]
    served = first + rest
    assert len(served) == len(set(served)), f"{len(served) - len(set(served))} records served twice"
    assert served == sorted(served, key=lambda i: int(i[1:]))
    assert served[-1] == "m6049"


def _dechunk(body: bytes) -> bytes:
    """A chunked HTTP/1.1 body's payload."""
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


def test_a_page_that_starts_on_an_empty_live_file_while_the_server_appends_is_served_once(tmp_path,
                                                                                            monkeypatch):
    """The issue's ['r1', 'r2', 'r2', 'r3']: the admin read runs in a thread while the server
    appends. A page that opened the live file while it was empty, read r2 written meanwhile,
    ended on a position naming no file, and the next page started the live file over."""
    directory = tmp_path / "log"
    with CiphertextLog(directory, fsync="never", gzip_in_background=False) as log:
        append(log, 1, 1)
        log.rotate()  # the live file is empty now
        looked = log_pages._first_digest

        def server_appends_meanwhile(f):
            digest = looked(f)
            if digest is None:
                append(log, 2, 1)  # exactly between looking at the live file and reading it
                monkeypatch.undo()
            return digest

        served, cursor, resume = page(directory, None, limit=10)
        assert [json.loads(line)["id"] for line in served] == ["m1"] and cursor is None
        monkeypatch.setattr(log_pages, "_first_digest", server_appends_meanwhile)
        more, cursor, resume = page(directory, resume, limit=10)
        assert [json.loads(line)["id"] for line in more] == ["m2"]
        served += more
        append(log, 3, 1)
        more, cursor, resume = page(directory, resume, limit=10)
        served += more
    assert [json.loads(line)["id"] for line in served] == ["m1", "m2", "m3"]


class Interference:
    """The server at work while a page is read: at random points of the walk (after a record
    goes into the page, when the walk looks at the live file) it appends or rotates."""

    def __init__(self, rnd: random.Random, log: CiphertextLog, written: list[str]):
        self.rnd, self.log, self.written, self.step = rnd, log, written, 0

    def act(self) -> None:
        roll = self.rnd.random()
        if roll < 0.25:
            self.step += 1
            name = f"w{self.step}"
            self.written.append(name)
            self.log.append({"event": "msg", "t": 0, "id": name, "pad": "y" * self.rnd.randint(0, 200)})
        elif roll < 0.32:
            self.log.rotate()


class InterferingSink(io.BytesIO):
    def __init__(self, interference: Interference):
        super().__init__()
        self.interference = interference

    def write(self, data) -> int:
        written = super().write(data)
        self.interference.act()
        return written


@pytest.mark.parametrize("seed", range(60))
def test_random_appends_rotations_retention_and_pages_serve_each_record_once(tmp_path, monkeypatch, seed):
    """Model check: whatever happens between pages and while one is read, every record comes
    at most once and in order; with retention off (keep=1000), exactly once."""
    rnd = random.Random(seed)
    keep = rnd.choice([1, 2, 1000, 1000])
    directory = tmp_path / "log"
    log = CiphertextLog(directory, keep=keep, max_bytes=1024, fsync="never", gzip_in_background=rnd.random() < 0.5)
    written, served, cursor = [], [], None
    interference = Interference(rnd, log, written)
    looked = log_pages._first_digest

    def digest_while_the_server_writes(f):
        digest = looked(f)
        interference.act()
        return digest

    monkeypatch.setattr(log_pages, "_first_digest", digest_while_the_server_writes)

    def read_page(limit: int) -> str | None:
        nonlocal cursor
        sink = InterferingSink(interference)
        gathered = collect(directory, decode(cursor) if cursor else None, sink, since=None, until=None, limit=limit)
        served.extend(json.loads(line)["id"] for line in sink.getvalue().decode().splitlines())
        cursor = encode(gathered.next or gathered.resume)
        return gathered.next

    try:
        for step in range(80):
            roll = rnd.random()
            if roll < 0.45:
                written.append(f"m{step}")
                log.append({"event": "msg", "t": step, "id": f"m{step}", "pad": "x" * rnd.randint(0, 300)})
            elif roll < 0.6:
                log.rotate()
            else:
                read_page(rnd.randint(1, 4))
        monkeypatch.undo()
        log.wait_for_background()
        while read_page(1000) is not None:
            pass
    finally:
        log.close()
    twice = sorted(i for i in set(served) if served.count(i) > 1)
    assert not twice, f"served twice: {twice}"
    assert served == [i for i in written if i in set(served)]  # in order
    if keep == 1000:
        assert served == written


def test_a_page_of_big_records_ends_at_its_byte_cap_and_the_next_one_goes_on(tmp_path):
    directory = tmp_path / "log"
    with CiphertextLog(directory, fsync="never", gzip_in_background=False) as log:
        big(log, 0, 10)  # ~950 bytes each
        served, cursor = [], None
        while True:
            sink = io.BytesIO()
            gathered = collect(directory, decode(cursor) if cursor else None, sink, since=None, until=None,
                               limit=1000, max_bytes=2500)
            lines = sink.getvalue().decode().splitlines()
            assert 1 <= len(lines) <= 3 and gathered.records == len(lines)
            served += [json.loads(line)["id"] for line in lines]
            if gathered.next is None:
                break
            cursor = encode(gathered.next)
    assert served == [f"m{n}" for n in range(10)]
