"""Attack: the page is framed, sniffed, fed inline script or tampered assets. Defence: headers and SRI."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.gen_test(timeout=30)

REQUIRED = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def fetch_any(http_client, url):
    try:
        return await http_client.fetch(url)
    except HTTPClientError as exc:
        return exc.response


def check_headers(response, port):
    for name, value in REQUIRED.items():
        assert response.headers.get(name) == value, name
    csp = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert csp["connect-src"] == f"'self' ws://127.0.0.1:{port}"
    assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'" and csp["form-action"] == "'none'"
    assert "camera=()" in response.headers["Permissions-Policy"]
    assert "microphone=()" in response.headers["Permissions-Policy"]


@pytest.mark.parametrize("path", ["/", "/healthz", "/static/js/main.js", "/static/css/styles.css", "/api/admin/status",
                                  "/no-such-page", "/static/no-such-file.js", "/ws"])
async def test_every_response_carries_the_security_headers(http_client, http_port, path):
    response = await fetch_any(http_client, f"http://127.0.0.1:{http_port}{path}")
    check_headers(response, http_port)


async def test_no_inline_script_or_style_in_the_page(http_client, http_port):
    page = (await http_client.fetch(f"http://127.0.0.1:{http_port}/")).body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline <script>"
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"


async def test_every_script_and_style_has_a_matching_integrity_hash(http_client, http_port):
    base = f"http://127.0.0.1:{http_port}"
    page = (await http_client.fetch(base + "/")).body.decode()
    tags = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(/static/[^"]+)"[^>]*>', page)
    assert any(t.startswith("/static/js/main.js") for t in tags)
    js_files = {t.split("?")[0] for t in tags if ".js" in t}
    served_js = set(re.findall(r'from "\./([a-z]+\.js)"', page))  # none expected inline
    assert not served_js
    for tag in re.findall(r'<(?:script|link)[^>]*(?:src|href)="/static/[^"]+"[^>]*>', page):
        if re.search(r'rel="(?:icon|apple-touch-icon|manifest)"', tag):
            continue  # images and the manifest run no code (and browsers ignore SRI on them)
        url = re.search(r'(?:src|href)="([^"]+)"', tag).group(1).replace("&amp;", "&")
        sri = re.search(r'integrity="sha384-([^"]+)"', tag)
        assert sri, f"no integrity on {tag}"
        body = (await http_client.fetch(base + url)).body
        assert base64.b64decode(sri.group(1)) == hashlib.sha384(body).digest(), url
    # Every module main.js can import is preloaded with integrity, so imports are pinned too.
    import pathlib

    static_js = {f"/static/js/{p.name}" for p in (pathlib.Path(__file__).parents[2] / "static/js").glob("*.js")}
    assert static_js <= js_files


@pytest.mark.parametrize("path", [
    "/static/../securechat/config.py", "/static/%2e%2e/cli.py", "/static/%2e%2e%2fcli.py",
    "/static/..%2f..%2fetc/passwd", "/static//etc/passwd", "/static/js/../../setup.cfg",
    "/static/%252e%252e/cli.py", "/static/js/..\\..\\cli.py",
])
async def test_path_traversal_on_static_urls(http_client, http_port, path):
    response = await fetch_any(http_client, f"http://127.0.0.1:{http_port}{path}")
    assert response.code in (400, 403, 404), f"{path} -> {response.code}"
    assert b"[metadata]" not in (response.body or b"") and b"root:" not in (response.body or b"")
