"""securechat behind a real nginx, configured with the snippet from docs/DEPLOY.md.

nginx (Debian's package) runs in the foreground on loopback ports with its own prefix, pid,
logs and temp dirs under tmp_path; securechat runs as `securechat serve` trusting 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import clean_env, free_port, wait_for_http
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from securechat.admin.client import AdminClient
from securechat.client import ChatClient, Message
from securechat.tls import ensure_self_signed

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "nginx-test-admin-token-0123456789"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed; .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    return found


# DEPLOY.md's one-line change for a proxy on the same machine: the upstream is the unix socket.
UNIX_UPSTREAM = "proxy_pass http://unix:/run/securechat/http.sock:;"


def documented_config(upstream: int | Path | str, plain: int, tls: int, cert: Path, key: Path) -> str:
    """The nginx block of docs/DEPLOY.md with this test's ports and certificate; upstream a
    port, the path of securechat's unix socket (the documented one-line change), or the URL of
    an `upstream` block (several machines: proxy_pass http://securechat)."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    (snippet,) = re.findall(r"```nginx\n(.*?)```", text, re.S)
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{plain};",
        "listen 443 ssl;": f"listen 127.0.0.1:{tls} ssl;",
        "/etc/letsencrypt/live/chat.example.org/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/chat.example.org/privkey.pem": str(key),
    }
    if isinstance(upstream, Path):
        assert f"`{UNIX_UPSTREAM}`" in text
        replacements["proxy_pass http://127.0.0.1:5000;"] = UNIX_UPSTREAM.replace("/run/securechat/http.sock",
                                                                                 str(upstream))
    elif isinstance(upstream, str):
        replacements["proxy_pass http://127.0.0.1:5000;"] = f"proxy_pass {upstream};"
    else:
        replacements["http://127.0.0.1:5000"] = f"http://127.0.0.1:{upstream}"
    for old, new in replacements.items():
        assert snippet.count(old) == 1, old
        snippet = snippet.replace(old, new)
    return snippet


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}: {log.read_text()}")


@pytest.fixture(params=["tcp", "unix"])
def deployment(request, tmp_path):
    """nginx in front of serve: over TCP trusting 127.0.0.1 (any local process could claim an
    address), or over [server] unix_socket with no trusted address at all."""
    nginx = nginx_binary()
    upstream, plain, tls = free_port(), free_port(), free_port()
    env = dict(XDG_RUNTIME_DIR=str(tmp_path / "run"), SECURECHAT_TOKEN=TOKEN, SECURECHAT_ALLOWED_HOSTS="chat.example.org")
    proxied_to: int | Path = upstream
    if request.param == "unix":
        # A short path: a unix socket's name is limited to 107 bytes.
        sockets = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
        request.addfinalizer(lambda: shutil.rmtree(sockets, ignore_errors=True))
        proxied_to = sockets / "http.sock"
        env["SECURECHAT_UNIX_SOCKET"] = str(proxied_to)
    else:
        env["SECURECHAT_PROXY_TRUSTED"] = "127.0.0.1"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--host", "127.0.0.1", "--port", str(upstream),
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=clean_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cert = ensure_self_signed(tmp_path / "cert")
    proxy, prefix = start_nginx(nginx, tmp_path, documented_config(proxied_to, plain, tls, cert.cert_path,
                                                                  cert.key_path))
    try:
        wait_for_http(f"http://127.0.0.1:{upstream}/healthz", server)
        wait_for_port(tls, proxy, prefix / "error.log")
        yield {"upstream": upstream, "plain": plain, "tls": tls, "fingerprint": cert.fingerprint,
               "socket": proxied_to if request.param == "unix" else None}
    finally:
        proxy.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=15)
        assert "Traceback" not in err


def start_nginx(nginx: str, tmp_path: Path, http_block: str) -> tuple[subprocess.Popen, Path]:
    """nginx in the foreground with its own prefix, pid, logs and temp dirs under tmp_path,
    serving `http_block` (the documented configuration) inside its http {}."""
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = prefix / "nginx.conf"
    conf.write_text("\n".join([
        "daemon off;",
        "worker_processes 1;",
        f"pid {prefix / 'nginx.pid'};",
        f"error_log {prefix / 'error.log'} info;",
        # As root nginx would hand its workers to `nobody`, who cannot enter tmp_path.
        "user root;" if os.geteuid() == 0 else "",
        "events { worker_connections 64; }",
        "http {",
        f"access_log {prefix / 'access.log'};",
        *(f"{name}_temp_path {path};" for name, path in temp.items()),
        http_block,
        "}",
    ]))
    proxy = subprocess.Popen([nginx, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proxy, prefix


def insecure() -> ssl.SSLContext:
    # The test certificate is self-signed; what is under test is the proxying, not the PKI.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def join(url: str, name: str, *, source: str | None = None, origin: str | None = None,
               headers: dict | None = None) -> ChatClient:
    """A client joined from a chosen loopback source address (a second machine, as far as TCP goes)."""
    client = ChatClient(url, name)
    request = HTTPRequest(url, headers={**({"Origin": origin} if origin else {}), **(headers or {})},
                          network_interface=source, ssl_options=insecure() if url.startswith("wss:") else None)
    client.ws = await asyncio.wait_for(websocket_connect(request), 10)
    hello = await client.expect("hello")  # the server speaks first
    client.room, client.challenge = hello["room"], hello["challenge"]
    await client.join()
    return client


async def close_all(clients: list[ChatClient]) -> None:
    for client in clients:
        client.close()
        while await asyncio.wait_for(client.ws.read_message(), 5) is not None:
            pass


def test_chat_through_nginx_sees_the_real_client_and_ignores_spoofing(deployment):
    tls, upstream = deployment["tls"], deployment["upstream"]
    public = f"https://127.0.0.1:{tls}"

    # The page loads through the proxy, with a policy for the public wss origin.
    with urllib.request.urlopen(public + "/", context=insecure(), timeout=10) as page:
        assert b"<html" in page.read().lower()
        csp = page.headers["Content-Security-Policy"]
    assert f"connect-src 'self' wss://127.0.0.1:{tls}" in csp and page.headers["Strict-Transport-Security"]

    # Plain http on the proxy only redirects.
    request = urllib.request.Request(f"http://127.0.0.1:{deployment['plain']}/")
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=10)
    redirect.value.close()
    assert redirect.value.code == 301 and redirect.value.headers["Location"].startswith("https://")

    async def scenario():
        wss = f"wss://127.0.0.1:{tls}/ws"
        alice = await join(wss, "alice", source="127.0.0.5", origin=public)
        bob = await join(wss, "bob", origin=public)
        # A client that claims another address to nginx: nginx appends what it saw.
        mallory = await join(wss, "mallory", source="127.0.0.7", origin=public,
                             headers={"X-Forwarded-For": "1.2.3.4"})
        # A client that skips the proxy and claims an address: not a trusted peer, not believed.
        eve = await join(f"ws://127.0.0.1:{upstream}/ws", "eve", source="127.0.0.6",
                         headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"})
        clients = [alice, bob, mallory, eve]
        try:
            for client in clients:
                while len(client.members) < 4:
                    await client.recv()
            await alice.send("hello through nginx")
            await alice.expect("ack")
            received = await bob.next_message()
            roster = await asyncio.to_thread(AdminClient(f"http://127.0.0.1:{upstream}/", TOKEN).roster)
        finally:
            await close_all(clients)
        return received, roster

    received, roster = asyncio.run(scenario())
    assert isinstance(received, Message) and received.text == "hello through nginx" and received.sender == "alice"
    remotes = {p["username"]: p["remote"] for p in roster["participants"]}
    assert remotes == {"alice": "127.0.0.5", "bob": "127.0.0.1", "mallory": "127.0.0.7", "eve": "127.0.0.6"}


def test_a_forged_origin_is_refused_through_nginx(deployment):
    async def scenario():
        with pytest.raises(Exception, match="403"):
            await join(f"wss://127.0.0.1:{deployment['tls']}/ws", "alice", origin="https://evil.example")

    asyncio.run(scenario())


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_the_admin_api_through_the_proxy(deployment):
    # The token travels inside nginx's TLS, after the admin client checked the certificate pin.
    admin = AdminClient(f"https://127.0.0.1:{deployment['tls']}/", TOKEN, pin=deployment["fingerprint"])
    assert admin.roster() == {"room": None, "participants": []}
    assert list(admin.logs()) == []


def test_attachments_through_the_proxy(deployment):
    """Parts up to the 4 MiB the server allows pass nginx as documented, and come back intact."""
    tls = deployment["tls"]
    public = f"https://127.0.0.1:{tls}"

    async def scenario():
        wss = f"wss://127.0.0.1:{tls}/ws"
        alice = await join(wss, "alice", origin=public)
        bob = await join(wss, "bob", origin=public)
        for client in (alice, bob):
            client.ssl_options = insecure()
            while len(client.members) < 2:
                await client.recv()
        try:
            data = os.urandom(6 * 1024 * 1024 + 3)
            _, ref = await alice.send_file(data, "through-nginx.bin")
            key = os.urandom(32)
            from securechat import filecrypto as fc

            big_parts = await alice.upload_blob(fc.encrypt_stream(key, [data]), fc.blob_size(len(data)),
                                                part_bytes=4 * 1024 * 1024)
            message = await bob.next_message()
            return data, await bob.fetch_file(message.files[0]), big_parts, ref
        finally:
            await close_all([alice, bob])

    data, fetched, big_parts, ref = asyncio.run(scenario())
    assert fetched == data and len(big_parts) == 64 and big_parts != ref.id


def through_nginx(tls: int, host: str, headers: dict | None = None) -> tuple[int, dict]:
    """GET / on nginx's TLS port with the given Host header: (status, response headers)."""
    connection = http.client.HTTPSConnection("127.0.0.1", tls, context=insecure(), timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def test_the_public_name_is_served_and_a_rebinding_name_is_not(deployment):
    tls = deployment["tls"]
    status, headers = through_nginx(tls, "chat.example.org")
    assert status == 200 and "connect-src 'self' wss://chat.example.org" in headers["Content-Security-Policy"]
    # nginx's first server block takes any name: securechat itself must refuse the ones it is not.
    status, _ = through_nginx(tls, "rebind.attacker.example")
    assert status == 421


def test_a_clients_own_x_forwarded_host_does_not_get_through(deployment):
    # The documented config sets X-Forwarded-Host to nginx's $host: the client's claim is replaced.
    status, headers = through_nginx(deployment["tls"], f"127.0.0.1:{deployment['tls']}",
                                    {"X-Forwarded-Host": "chat.example.org"})
    assert status == 200
    assert "wss://chat.example.org" not in headers["Content-Security-Policy"]


def test_the_http_fallback_streams_through_nginx_unbuffered(deployment):
    """The HTTP transport behind the documented proxy: the stream's events pass through as they
    are written (securechat's X-Accel-Buffering: no), POSTs keep their Origin and token."""
    public = f"https://127.0.0.1:{deployment['tls']}"

    async def scenario():
        phone = ChatClient(public, "iris", transport="http")
        await phone.connect(origin=public, ssl_options=insecure())
        alice = await join(f"wss://127.0.0.1:{deployment['tls']}/ws", "alice", origin=public)
        try:
            while len(phone.members) < 2 or len(alice.members) < 2:
                await (phone.recv(5) if len(phone.members) < 2 else alice.recv(5))
            await alice.send("through the proxy, right away")
            # A buffering proxy would hold this small event until its buffer filled (pings add
            # 22 bytes every 20 s) or the response ended: it would miss this generous deadline.
            received = await phone.next_message(timeout=5)
            await phone.deliver("and back")
            answer = await alice.next_message()
            while answer.sender != "iris":
                answer = await alice.next_message()
        finally:
            phone.close()
            await close_all([alice])
        return received, answer

    received, answer = asyncio.run(scenario())
    assert isinstance(received, Message) and received.text == "through the proxy, right away"
    assert answer.text == "and back"
