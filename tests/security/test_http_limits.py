"""Attacks under the WebSocket handler: slowloris, huge bodies, connection floods, and running
out of file descriptors. The attacker is a raw socket; the server is the one `serve` runs."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import serving, settle
from test_resource_abuse import chat_round, in_thread

from securechat.client import ChatClient
from securechat.config import Config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "http-limits-admin-token-0123456789"

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path / "data", port=0, log_fsync="never", admin_token=TOKEN,
                  header_timeout=1.0, body_timeout=1.0, max_connections_per_address=8)


def raw(port: int, data: bytes = b"", source: str | None = None, timeout: float = 10) -> socket.socket:
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
        if data:
            sock.sendall(data)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the socket's timeout, which fails)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return read_all(sock) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


# -- deadlines -------------------------------------------------------------------------------


async def test_a_request_head_sent_slowly_is_cut_at_the_header_deadline(http_server, http_port):
    # Tornado's default would keep this socket for an hour; limits.header_timeout is 1 s here.
    sock = await in_thread(raw, http_port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.monotonic()
    assert await in_thread(closed_by_server, sock)
    assert time.monotonic() - started < 8


async def test_an_idle_keep_alive_connection_is_closed(http_server, http_port):
    sock = await in_thread(raw, http_port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = await in_thread(read_all, sock)  # returns only once the server closed the connection
    assert reply.startswith(b"HTTP/1.1 200") and b'"status": "ok"' in reply


async def test_a_body_sent_slowly_is_cut_at_the_body_deadline(http_server, http_port):
    sock = await in_thread(raw, http_port, b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"Content-Length: 1000\r\n\r\n0123456789")
    assert await in_thread(closed_by_server, sock)


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/admin/logs/rotate", "/ws", "/static/js/main.js"])
async def test_a_body_over_the_default_limit_is_refused_before_it_is_sent(http_server, http_port, path):
    # 100 MiB announced, nothing sent: the answer comes at once, nothing is buffered.
    sock = await in_thread(raw, http_port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           f"Content-Length: {100 * 2**20 - 1}\r\n\r\n".encode(), None, 5)
    reply = await in_thread(read_all, sock)
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.1 401"), reply[:80]


async def test_the_admin_api_checks_the_token_before_reading_the_body(http_server, http_port):
    # A body within the default limit, never sent: a handler that read the body first would wait.
    head = (b"POST /api/admin/logs/rotate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n")
    reply = await in_thread(read_all, await in_thread(raw, http_port, head, None, 5))
    assert reply.startswith(b"HTTP/1.1 401") and b"admin token" in reply


async def test_an_admin_body_is_small_even_with_the_token(http_server, http_port):
    head = (f"POST /api/admin/logs/rotate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: 5000\r\n\r\n").encode()
    reply = await in_thread(read_all, await in_thread(raw, http_port, head, None, 5))
    assert reply.startswith(b"HTTP/1.1 400")


async def test_a_wrong_token_with_a_small_body_still_reads_401(http_client, base_url):
    for _ in range(20):
        response = await http_client.fetch(base_url + "/api/admin/logs/rotate", method="POST", body='{"keep": 2}',
                                           headers={"Authorization": "Bearer wrong"}, raise_error=False)
        assert response.code == 401


# -- connection caps -------------------------------------------------------------------------


async def test_a_tcp_flood_from_one_address_is_capped_and_others_still_chat(tmp_path):
    # Heads may take 30 s here, so the cap, not the deadline, is what the flood meets.
    config = Config(data_dir=tmp_path / "flood", port=0, log_fsync="never", header_timeout=30.0,
                    max_connections_per_address=8)
    flood = 1000

    def attack(port):
        socks = []
        for _ in range(flood):
            # Half a request head, like slowloris: each would hold a descriptor until the deadline.
            socks.append(raw(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", source="127.0.0.2", timeout=5))
        time.sleep(0.3)
        alive = []
        for sock in socks:
            sock.setblocking(False)
            try:
                gone = sock.recv(1) == b""
            except BlockingIOError:
                gone = False
            except ConnectionResetError:
                gone = True
            if gone:
                sock.close()
            else:
                alive.append(sock)
        return alive

    async with serving(config) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        alice, bob = ChatClient(url, "alice"), ChatClient(url, "bob")
        await alice.connect()
        await bob.connect()
        await settle(alice, bob, members=2)
        alive = await in_thread(attack, port)
        try:
            assert len(alive) == 8
            await chat_round(alice, bob, "during the flood")
            carol = ChatClient(url, "carol")  # another address still gets in
            await carol.connect()
            await settle(alice, bob, carol, members=3)
            carol.close()
        finally:
            for sock in alive:
                sock.close()
        await asyncio.sleep(0.3)
        # The slots came back: that address is served again.
        sock = await in_thread(raw, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                               "127.0.0.2")
        assert (await in_thread(read_all, sock)).startswith(b"HTTP/1.1 200")
        alice.close()
        bob.close()


async def test_the_total_cap_counts_websockets_after_their_upgrade(tmp_path):
    from tornado.websocket import websocket_connect

    config = Config(data_dir=tmp_path / "cap", port=0, log_fsync="never", max_connections=3)
    async with serving(config) as port:
        sockets = [await websocket_connect(f"ws://127.0.0.1:{port}/ws") for _ in range(3)]
        # The three upgraded sockets still hold their TCP slots: a fourth connection is closed.
        sock = await in_thread(raw, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", None, 5)
        assert await in_thread(closed_by_server, sock)
        sockets.pop().close()
        await asyncio.sleep(0.3)
        sock = await in_thread(raw, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await in_thread(read_all, sock)).startswith(b"HTTP/1.1 200")
        for ws in sockets:
            ws.close()


# -- file descriptors ------------------------------------------------------------------------

HARNESS = r"""
import asyncio, os, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
from securechat.client import ChatClient
from securechat.config import Config
from securechat.logfmt import configure
from securechat.server import start

async def main():
    configure(False)
    server = await start(Config(data_dir=sys.argv[1], port=0, log_fsync="never",
                                max_connections_per_address=10000))
    print(server.config.max_connections, server.port, flush=True)
    fillers = []
    loop = asyncio.get_running_loop()
    def command():
        line = sys.stdin.readline().strip()
        if line == "fill":  # every descriptor left, as if something else had taken them
            try:
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            print("filled", len(fillers), flush=True)
        elif line == "free":
            while fillers:
                os.close(fillers.pop())
            print("freed", flush=True)
        else:
            loop.stop()
    loop.add_reader(sys.stdin, command)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(port: int, path: str = "/healthz", sock: socket.socket | None = None) -> bytes:
    own = sock is None
    sock = sock or raw(port, timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(65536)
    head, _, body = reply.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    if own:
        sock.close()
    return head + b"\r\n\r\n" + body


@pytest.mark.gen_test(timeout=90)
async def test_out_of_descriptors_the_accept_loop_backs_off_and_recovers(tmp_path):
    log = tmp_path / "stderr.txt"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path / "data"), "128"], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink, text=True)
    try:
        cap, port = map(int, server.stdout.readline().split())
        assert 0 < cap < 128
        keep_alive = await in_thread(raw, port)
        assert (await in_thread(http_get, port, "/healthz", keep_alive)).startswith(b"HTTP/1.1 200")
        server.stdin.write("fill\n")
        server.stdin.flush()
        assert server.stdout.readline().startswith("filled")
        # Connections now wait in the kernel's queue: accept() fails with EMFILE.
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        waiting = [await in_thread(raw, port, request) for _ in range(20)]
        before = cpu_seconds(server.pid)
        await asyncio.sleep(3)
        spent = cpu_seconds(server.pid) - before
        # Tornado's accept handler raised on every loop iteration: 15,000 log lines and over a
        # second of CPU in these 3 s (all of it when the log is fast enough).
        assert spent < 0.5, f"the server spun at {spent / 3:.0%} CPU while out of descriptors"
        # The loop is not stuck: a connection it already has is still served.
        assert (await in_thread(http_get, port, "/healthz", keep_alive)).startswith(b"HTTP/1.1 200")
        server.stdin.write("free\n")
        server.stdin.flush()
        assert server.stdout.readline().startswith("freed")
        replies = [await in_thread(read_all, sock) for sock in waiting]
        assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
        keep_alive.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        for pipe in (server.stdin, server.stdout):
            pipe.close()
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    about = [line for line in lines if "cannot accept connections" in line]
    assert 1 <= len(about) <= 2, lines[:5]
    assert "Too many open files" in about[0]
    assert len(lines) < 10, f"{len(lines)} log lines, e.g. {lines[:3]}"
    assert "Traceback" not in err


def test_serve_lowers_max_connections_to_the_descriptor_limit_with_one_line(tmp_path):
    from helpers import clean_env, free_port, wait_for_http

    port = free_port()

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port),
                               "--data-dir", str(tmp_path / "data")], cwd=ROOT, preexec_fn=low_limit,
                              env=clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        health = json.loads(wait_for_http(f"http://127.0.0.1:{port}/healthz", server))
        assert health["status"] == "ok"
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=15)
    about = [line for line in err.splitlines() if "max_connections" in line]
    assert len(about) == 1, err
    assert "limits.max_connections is 10000, but the file-descriptor limit of 256" in about[0]
    assert "LimitNOFILE" in about[0] and "serving at most" in about[0]
