"""The HTTP side of the server: the page, its static files and the health check."""

from __future__ import annotations

import json
import re

import pytest
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.gen_test(timeout=30)


async def test_index_uses_versioned_static_urls(http_client, base_url):
    response = await http_client.fetch(base_url + "/")
    assert response.code == 200 and "text/html" in response.headers["Content-Type"]
    page = response.body.decode()
    entry_points = re.findall(r'<(?:script|link rel="stylesheet")[^>]*(?:src|href)="(/static/[^"]+)"', page)
    assert len(entry_points) == 2 and all("?v=" in url for url in entry_points)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    for url in assets:
        static = await http_client.fetch(base_url + url.replace("&amp;", "&"))
        assert static.code == 200 and static.body


async def test_healthz(http_client, base_url, connect):
    await connect("alice")
    response = await http_client.fetch(base_url + "/healthz")
    body = json.loads(response.body)
    assert body["status"] == "ok" and body["connections"] == 1
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/static/../securechat/config.py", "/static/%2e%2e/cli.py", "/nope"])
async def test_no_file_outside_static(http_client, base_url, path):
    with pytest.raises(HTTPClientError) as info:
        await http_client.fetch(base_url + path)
    assert info.value.code in (403, 404)
