"""Attachments against a real `securechat serve`: throughput, server memory, chat latency.

python -m bench.attachments [--mib 25] [--repeats 3] [--json FILE]

Everything in one invocation, so the figures are ratios on the same (noisy, shared) machine:

- upload: the Python reference client encrypts a file and sends it in 1 MiB parts to securechat,
  against the same bytes sent in the same parts to a bare Tornado `stream_request_body`
  handler that only writes them to a file (the reference: what streaming to disk costs at all);
  and an already encrypted blob of that size, so the server's own share shows apart from the
  client's encryption;
- download: fetch, verify and decrypt, against a plain GET of the same file from the reference;
- server RSS sampled every 5 ms from /proc while the upload streams through, against the RSS
  just before it;
- chat: round trips of a small message between two other members, idle and during the upload
  (the bench's server allows 1000 frames/s per connection, so its pings, ~40/s, are never
  rate-limited: the default 10/s would drop them after the burst).

All traffic stays on 127.0.0.1; every loop is bounded by a count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from securechat import filecrypto as fc
from securechat.client import PART_BYTES, ChatClient

from .runner import REPO, free_port

REFERENCE = r'''
import os, sys, tornado.ioloop, tornado.web
path = sys.argv[2]

@tornado.web.stream_request_body
class Sink(tornado.web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(8 << 20)
        first = self.request.headers["Upload-Offset"] == "0"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if first else 0))
        os.lseek(self.fd, 0, os.SEEK_END)
    def data_received(self, chunk):
        os.write(self.fd, chunk)
    def patch(self):
        os.close(self.fd)
        self.write({"offset": os.path.getsize(path)})

class File(tornado.web.RequestHandler):
    async def get(self):
        with open(path, "rb") as fh:
            while data := fh.read(256 * 1024):
                self.write(data)
                await self.flush()

app = tornado.web.Application([(r"/sink", Sink), (r"/file", File)])
app.listen(int(sys.argv[1]), "127.0.0.1")
tornado.ioloop.IOLoop.current().start()
'''


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))


def start(cmd: list[str], port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except Exception as exc:  # noqa: BLE001 - not up yet (or 404 from the reference: up)
            if getattr(exc, "code", None) == 404:
                return proc
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{cmd[1]} did not start")


async def reference_upload(port: int, blob: bytes) -> float:
    from tornado.httpclient import AsyncHTTPClient

    client, started = AsyncHTTPClient(), time.perf_counter()
    for offset in range(0, len(blob), PART_BYTES):
        await client.fetch(f"http://127.0.0.1:{port}/sink", method="PATCH", body=blob[offset:offset + PART_BYTES],
                           headers={"Upload-Offset": str(offset)})
    return time.perf_counter() - started


async def reference_download(port: int) -> float:
    from tornado.httpclient import AsyncHTTPClient

    started = time.perf_counter()
    await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/file", streaming_callback=lambda _: None)
    return time.perf_counter() - started


async def chat_round_trip(a: ChatClient, b: ChatClient, n: int) -> float:
    started = time.perf_counter()
    await a.deliver(f"ping {n}")  # waits for the ack: a refused ping is an error here, not a timeout
    while True:
        message = await b.next_message(10)
        if getattr(message, "text", "") == f"ping {n}":
            return (time.perf_counter() - started) * 1000


async def scenario(ws: str, pid: int, ref_port: int, mib: int, repeats: int) -> dict:
    data = os.urandom(mib * 1024 * 1024)
    alice, bob, carol, dave = (ChatClient(ws, name) for name in ("alice", "bob", "carol", "dave"))
    for client in (alice, bob, carol, dave):
        await client.connect()
    for client in (alice, bob, carol, dave):
        while len(client.members) < 4:
            await client.recv(5)
    await alice.send_file(b"warm-up" * 1000, "warm.bin")
    idle = [await chat_round_trip(carol, dave, n) for n in range(30)]
    runs = []
    for repeat in range(repeats):
        blob = b"".join(fc.encrypt_stream(fc.new_file_key(), [data]))
        reference_up = await reference_upload(ref_port, blob)
        reference_down = await reference_download(ref_port)
        await asyncio.sleep(0.3)
        baseline = rss(pid)
        sampler = Sampler(pid)
        sampler.start()
        busy, pings = asyncio.Event(), []
        busy.set()

        async def talk():
            n = 1000 * (repeat + 1)
            while busy.is_set():
                n += 1
                pings.append(await chat_round_trip(carol, dave, n))
                await asyncio.sleep(0.02)

        talker = asyncio.ensure_future(talk())
        started = time.perf_counter()
        _, ref = await alice.send_file(data, f"run{repeat}.bin")
        upload = time.perf_counter() - started
        busy.clear()
        await talker
        sampler.stop.set()
        sampler.join()
        started = time.perf_counter()
        await alice.upload_blob([blob], len(blob))  # the server's side alone: no encryption here
        upload_blob = time.perf_counter() - started
        message = await bob.next_message(10)
        while not getattr(message, "files", None) or message.files[0].id != ref.id:
            message = await bob.next_message(10)
        started = time.perf_counter()
        assert await bob.fetch_file(message.files[0]) == data
        download = time.perf_counter() - started
        runs.append({"upload_s": upload, "upload_blob_s": upload_blob, "reference_upload_s": reference_up,
                     "download_s": download, "reference_download_s": reference_down, "rss_before": baseline,
                     "rss_peak": sampler.peak, "chat_during_ms": pings})
    for client in (alice, bob, carol, dave):
        client.close()
    return {"mib": mib, "idle_chat_ms": idle, "runs": runs}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def report(result: dict) -> str:
    mib, runs = result["mib"], result["runs"]
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    during = [p for r in runs for p in r["chat_during_ms"]]
    idle = result["idle_chat_ms"]
    growth = max(r["rss_peak"] - r["rss_before"] for r in runs)
    lines = [
        f"attachments, {mib} MiB file, {len(runs)} runs (medians)",
        "",
        "| | securechat | reference | ratio |",
        "|---|---:|---:|---:|",
        f"| upload (encrypt + 1 MiB parts), MiB/s | {mib / median('upload_s'):.1f} | "
        f"{mib / median('reference_upload_s'):.1f} | {median('upload_s') / median('reference_upload_s'):.2f} |",
        f"| upload of the blob alone (no encryption), MiB/s | {mib / median('upload_blob_s'):.1f} | "
        f"{mib / median('reference_upload_s'):.1f} | {median('upload_blob_s') / median('reference_upload_s'):.2f} |",
        f"| download (verify + decrypt), MiB/s | {mib / median('download_s'):.1f} | "
        f"{mib / median('reference_download_s'):.1f} | {median('download_s') / median('reference_download_s'):.2f} |",
        "",
        f"server RSS: {statistics.median(r['rss_before'] for r in runs) / 2**20:.1f} MiB before the upload, "
        f"at most +{growth / 2**20:.1f} MiB while {mib} MiB streamed through",
        f"chat round trip (two other members): idle p50 {percentile(idle, .5):.1f} ms / "
        f"p99 {percentile(idle, .99):.1f} ms; "
        f"during uploads p50 {percentile(during, .5):.1f} ms / p99 {percentile(during, .99):.1f} ms "
        f"({len(during)} messages; p50 ratio {percentile(during, .5) / percentile(idle, .5):.2f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attachments", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=25, help="file size in MiB (default 25, the default limit)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the raw results")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    with tempfile.TemporaryDirectory() as tmp:
        env.update(XDG_RUNTIME_DIR=str(Path(tmp) / "run"), PYTHONPATH=str(REPO),
                   SECURECHAT_ATTACHMENTS_MAX_BYTES=str(max(args.mib, 1) << 20),
                   SECURECHAT_ATTACHMENTS_QUOTA_BYTES=str((2 * args.repeats + 2) * (args.mib + 1) << 20),
                   SECURECHAT_RATE_PER_SECOND="1000", SECURECHAT_RATE_BURST="1000")
        port, ref_port = free_port(), free_port()
        serve = start([sys.executable, "-m", "cli", "serve", "--port", str(port), "--data-dir", f"{tmp}/data"],
                      port, env)
        reference = start([sys.executable, "-c", REFERENCE, str(ref_port), f"{tmp}/reference.bin"], ref_port, env)
        try:
            result = asyncio.run(scenario(f"ws://127.0.0.1:{port}/ws", serve.pid, ref_port, args.mib, args.repeats))
        finally:
            for proc in (serve, reference):
                proc.terminate()
                proc.wait(10)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
