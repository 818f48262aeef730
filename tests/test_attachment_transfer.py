"""A large attachment against a real `securechat serve` process: the server's memory stays
bounded (measured from /proc while 25 MiB stream through it) and chat keeps flowing.

Latencies are printed, never asserted (the machine is shared and noisy); bench/attachments.py
gives the figures. Memory is asserted: streaming means the upload never sits in the process.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

from helpers import Server, close_all, files_containing, joined

from securechat import filecrypto as fc

MARKER = b"PLAINTEXT-MARKER-large-transfer-51c2"
SIZE = 25 * 1024 * 1024  # the default limit, exactly


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.samples = pid, 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1


def test_a_25_mib_upload_keeps_server_memory_bounded_while_chat_flows(tmp_path, capsys):
    server = Server(tmp_path)
    pid = server.process.pid
    data = (MARKER + bytes(range(256)) * 64) * (SIZE // (len(MARKER) + 256 * 64) + 1)
    data = data[:SIZE]

    async def scenario():
        alice, bob = await joined(server.ws, "alice", "bob")
        while len(alice.members) < 2 or len(bob.members) < 2:
            await (alice if len(alice.members) < 2 else bob).recv(2)
        await alice.send_file(b"warm-up" * 1000, "warm.bin")  # imports, threads, buffers
        await bob.next_message()
        await asyncio.sleep(0.3)
        baseline = rss_bytes(pid)
        sampler = Sampler(pid)
        sampler.start()
        latencies: list[float] = []
        uploading = asyncio.Event()
        uploading.set()

        async def chat():
            n = 0
            while uploading.is_set():
                n += 1
                sent = time.perf_counter()
                await bob.deliver(f"ping {n}")
                while True:
                    received = await alice.next_message()
                    if received.text == f"ping {n}":
                        break
                latencies.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(0.05)

        talker = asyncio.ensure_future(chat())
        started = time.perf_counter()
        _, ref = await alice.send_file(data, "large.bin")
        upload_s = time.perf_counter() - started
        uploading.clear()
        await talker
        sampler.stopped.set()
        sampler.join()
        message = None
        while message is None or not message.files:
            message = await bob.next_message()
        started = time.perf_counter()
        assert await bob.fetch_file(message.files[0]) == data
        download_s = time.perf_counter() - started
        await close_all([alice, bob])
        return baseline, sampler, latencies, upload_s, download_s, ref

    baseline, sampler, latencies, upload_s, download_s, ref = asyncio.run(scenario())
    growth = sampler.peak - baseline
    with capsys.disabled():  # the figures belong in the test output even when it passes
        report(upload_s, download_s, baseline, sampler, growth, latencies)
    server.stop()
    # Streaming: the upload never sits in the server; a buffering server would grow by >= 25 MiB.
    assert growth < 8 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.1f} MiB during a 25 MiB upload"
    assert sampler.samples > 10 and latencies, "the measurement did not run during the upload"
    assert (server.data / "blobs" / ref.id).stat().st_size == fc.blob_size(SIZE)
    assert files_containing(server.data, MARKER) == []


def report(upload_s, download_s, baseline, sampler, growth, latencies) -> None:
    mib = SIZE / 1024 / 1024
    print(f"\nupload of {mib:.0f} MiB (encrypt + 1 MiB parts): {upload_s:.2f} s = {mib / upload_s:.1f} MiB/s; "
          f"download + verify + decrypt: {download_s:.2f} s = {mib / download_s:.1f} MiB/s")
    print(f"server RSS: {baseline / 2**20:.1f} MiB before, peak {sampler.peak / 2**20:.1f} MiB during the upload "
          f"(+{growth / 2**20:.1f} MiB, {sampler.samples} samples)")
    if latencies:
        print(f"chat round trips during the upload: {len(latencies)}, median {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")
