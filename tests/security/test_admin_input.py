"""Hostile input to the admin API, with the right token: every bad value is a clean 400.

Before, a cursor or body nested a couple of thousand levels deep raised RecursionError, an offset
past 2^63 made seek() raise OverflowError and `{"keep": 1e400}` made int() raise
OverflowError: each a 500 with a traceback in the server log.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from securechat.config import Config

pytestmark = pytest.mark.gen_test(timeout=30)

TOKEN = "admin-input-token-0123456789abcdef"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", admin_token=TOKEN)


def cursor(fields) -> str:
    """A cursor in this server's encoding (log_pages.encode) around any JSON text."""
    text = fields if isinstance(fields, str) else json.dumps(fields)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


DEEP = "[" * 3000 + "]" * 3000
DEEP_BODY = "[" * 2000 + "]" * 2000  # an admin body is at most 4 KiB
STAMP = "20261125T101010123456Z"

BAD_REQUESTS = {
    "cursor nested 3,000 deep": ("GET", "/api/admin/logs?cursor=" + cursor(DEEP), None),
    "cursor of 30 kB": ("GET", "/api/admin/logs?cursor=" + cursor([1, None, 0, 0, None, "a" * 22_000]), None),
    "cursor offset 2^64 in the live file": ("GET", "/api/admin/logs?cursor=" + cursor([1, None, 2**64, 0, None, "ab" * 16]), None),
    "cursor offset 2^63 in a rotated file": ("GET", "/api/admin/logs?cursor=" + cursor([1, STAMP, 2**63, 1, None, None]), None),
    "cursor offset -1": ("GET", "/api/admin/logs?cursor=" + cursor([1, STAMP, -1, 0, None, None]), None),
    "cursor offset 1.5": ("GET", "/api/admin/logs?cursor=" + cursor([1, STAMP, 1.5, 0, None, None]), None),
    "limit of 5,000 digits": ("GET", "/api/admin/logs?limit=" + "9" * 5000, None),
    "since of 5,000 digits": ("GET", "/api/admin/logs?since=" + "9" * 5000, None),
    "rotate body nested 2,000 deep": ("POST", "/api/admin/logs/rotate", DEEP_BODY),
    "rotate keep nested 2,000 deep": ("POST", "/api/admin/logs/rotate", '{"keep": ' + "[" * 2000 + "]" * 2000 + "}"),
    "rotate keep 1e400 (infinity)": ("POST", "/api/admin/logs/rotate", '{"keep": 1e400}'),
    "rotate keep Infinity": ("POST", "/api/admin/logs/rotate", '{"keep": Infinity}'),
    "rotate keep NaN": ("POST", "/api/admin/logs/rotate", '{"keep": NaN}'),
    "rotate keep of 5,000 digits": ("POST", "/api/admin/logs/rotate?keep=" + "9" * 5000, ""),
    "rotate body not UTF-8": ("POST", "/api/admin/logs/rotate", b"\xff\xfe{}"),
    "prune body nested 2,000 deep": ("POST", "/api/admin/blobs/prune", DEEP_BODY),
    "prune dry_run nested 2,000 deep": ("POST", "/api/admin/blobs/prune", '{"dry_run": ' + "[" * 2000 + "]" * 2000 + "}"),
    "prune body a JSON list": ("POST", "/api/admin/blobs/prune", "[1]"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
async def test_hostile_admin_input_is_a_clean_400(http_client, base_url, hub, caplog, name):
    method, path, body = BAD_REQUESTS[name]
    hub.log.append({"event": "msg", "t": 1_700_000_000_000, "id": "m0"})
    with caplog.at_level(logging.WARNING):
        response = await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.code == 400, (response.code, response.body[:200])
    assert json.loads(response.body)["error"]
    assert b"Traceback" not in response.body
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


async def test_a_huge_keep_that_is_a_number_is_fine(http_client, base_url, hub):
    """Not every big value is an attack: keep=10**30 means keep everything."""
    response = await http_client.fetch(base_url + "/api/admin/logs/rotate?keep=" + "1" + "0" * 30, method="POST",
                                       body="", headers={"Authorization": f"Bearer {TOKEN}"}, raise_error=False)
    assert response.code == 200, response.body
