"""The ciphertext log in pages: cursors that survive rotation, and GET /api/admin/logs."""

from __future__ import annotations

import json

import pytest

from securechat.config import Config
from securechat.storage import log_pages
from securechat.storage.ciphertext_log import CiphertextLog, LogRecord, read_log
from securechat.storage.log_pages import Position, decode, encode, measure, records

TOKEN = "log-pages-admin-token-0123456789"


def stored(directory) -> list[str]:
    return [r.raw for r in read_log(directory) if isinstance(r, LogRecord)]


def page(directory, cursor, limit=3, since=None, until=None):
    """One page as the handler serves it: measure, then stream the counted records."""
    start = decode(cursor) if cursor else None
    measured = measure(directory, start, since=since, until=until, limit=limit)
    lines = records(directory, start, since=since, until=until)
    got = log_pages.take(lines, measured.records, 10**9) if measured.records else []
    lines.close()
    return got, encode(measured.next) if measured.next else None, encode(measured.resume)


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
