"""The fan-out benchmark: servers in subprocesses, one load generator, figures per run.

Layout of one invocation (every loop is bounded by a count or a deadline):

  for each relay (securechat, reference) and each room size N:
      start the relay in a subprocess pinned to core 0 (taskset), N clients join one room,
      (a) open loop: S senders share a fixed offered rate R for D seconds -> p50/p99 latency
      (b) closed loop: S senders each keep W messages in flight for D seconds -> throughput,
          server CPU per message (from /proc/<pid>/stat), egress bytes, RSS
  slow consumer: N = 100 open loop with and without one client that stops reading
  idle: 1,000 and 5,000 connections that only open the WebSocket (no join) -> RSS / connection

The generator runs in this process, pinned to core 1. Latency = time the delivery's bytes were
read by the recipient's socket minus the time the frame was written by the sender, both on this
process's perf_counter; the generator keeps id -> send time (nothing is added to frames).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securechat import crypto

from . import keys as bench_keys
from .httpclient import connect as http_connect
from .wsclient import WSClient, connect, encode_frame

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# The per-connection token bucket is raised so the benchmark measures the relay, not the limit.
BENCH_ENV = {
    "SECURECHAT_RATE_PER_SECOND": "1000000",
    "SECURECHAT_RATE_BURST": "1000000",
    "SECURECHAT_MAX_PARTICIPANTS": "256",
    # All load comes from 127.0.0.1: lift the per-address connection and join budgets too.
    "SECURECHAT_MAX_CONNECTIONS": "20000",
    "SECURECHAT_MAX_CONNECTIONS_PER_ADDRESS": "20000",
    "SECURECHAT_JOINS_PER_MINUTE": "100000",
    # The idle measurement holds thousands of never-joined sockets open on purpose.
    "SECURECHAT_MAX_UNJOINED": "20000",
    "SECURECHAT_MAX_UNJOINED_PER_ADDRESS": "20000",
    "SECURECHAT_JOIN_TIMEOUT": "600",
}
NOFILE = 65536


# -- processes ---------------------------------------------------------------------------------


def raise_nofile(target: int = NOFILE) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Every core this process may use, read before pin_generator() narrows it to one: the frame
# builders (FrameBuilder) run on all of them while no phase is measured.
ALL_CPUS = sorted(os.sched_getaffinity(0))


def pin_generator() -> str:
    """Put the generator on the second core; the relay gets the first (relay_pinning)."""
    if len(ALL_CPUS) >= 2:
        os.sched_setaffinity(0, {ALL_CPUS[1]})
        return f"core {ALL_CPUS[1]}"
    return "unpinned (one core)"


def relay_pinning() -> tuple[list[str], str]:
    """The taskset prefix that puts a server on the first core, and how to report it.

    Read from ALL_CPUS, not os.sched_getaffinity(0): by the time a relay starts, pin_generator()
    has narrowed this process's affinity to the generator's core, and a relay started without taskset
    inherits it, sharing one core with the generator while the other stays idle. Until
    2026-12-03 every bench run did exactly that (docs/PERFORMANCE.md).
    """
    if shutil.which("taskset") and len(ALL_CPUS) >= 2:
        return ["taskset", "-c", str(ALL_CPUS[0])], f"core {ALL_CPUS[0]}"
    return [], "unpinned"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Relay:
    kind: str  # "securechat" or "reference"
    proc: subprocess.Popen
    port: int
    data_dir: Path | None
    pinned: str
    probe: Path | None = None  # bench/probe.py's lag samples, when it runs under the probe

    def lag(self, since: float, until: float) -> dict:
        """The event loop's lag between two time.monotonic() instants (probe runs only)."""
        from .probe import read_samples, summary

        return summary(read_samples(self.probe, since, until)) if self.probe else {}

    def stalls(self, since: float, until: float) -> dict:
        """The probe's late callbacks between two instants, each with what overlapped it
        (bench/probe.py attribute(): collections, the log's work, no CPU)."""
        from .probe import attribute, read_events, read_timed

        return attribute(read_timed(self.probe, since, until), read_events(self.probe, since, until)) \
            if self.probe else {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime + stime, plus cutime + cstime: the children the relay waited for, i.e. the gzip
        # of a rotated log segment, which runs in a child process (ciphertext_log) and is part of
        # what a message costs.
        return sum(int(f) for f in fields[11:15]) / CLK_TCK

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start_relay(kind: str, workdir: Path, log_fsync: str | None = None,
                reference_gc: tuple[int, ...] | None = None, **options) -> Relay:
    return wait_until_ready(launch_relay(kind, workdir, log_fsync, reference_gc, **options))


def start_relays(kinds: tuple[str, ...], workdir: Path, reference_gc: tuple[int, ...] | None = None,
                 **options) -> dict:
    """Several relays started at once: their ~1 s of imports overlap instead of adding up."""
    launched = [launch_relay(kind, workdir, reference_gc=reference_gc, **options) for kind in kinds]
    try:
        return {relay.kind: wait_until_ready(relay) for relay in launched}
    except BaseException:
        for relay in launched:
            relay.stop()
        raise


def launch_relay(kind: str, workdir: Path, log_fsync: str | None = None,
                 reference_gc: tuple[int, ...] | None = None, probe: bool = False,
                 env_extra: dict[str, str] | None = None) -> Relay:
    """probe: run the relay under bench/probe.py (event-loop lag samples); env_extra: more
    SECURECHAT_* settings for securechat (the rotation scenario's log size in --quick)."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    data_dir = None
    if kind == "securechat":
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
        env.update(BENCH_ENV)
        if log_fsync:
            env["SECURECHAT_LOG_FSYNC"] = log_fsync
        env.update(env_extra or {})
        # The real `securechat serve` (cli.py's Click command), from this checkout.
        argv = ["cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    else:
        argv = ["bench.reference_relay", "--port", str(port)]
        if reference_gc:
            argv += ["--gc-thresholds", ",".join(map(str, reference_gc))]
    probe_path = None
    if probe:
        probe_path = Path(tempfile.mkstemp(prefix=f"lag-{kind}-", suffix=".bin", dir=workdir)[1])
        argv = [sys.executable, "-m", "bench.probe", str(probe_path), *argv]
    else:
        argv = [sys.executable, "-m", *argv]
    taskset, pinned = relay_pinning()
    argv = [*taskset, *argv]
    proc = subprocess.Popen(
        argv, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: raise_nofile(NOFILE),
        # taskset execs the command, so the child pid is the relay's pid
    )
    return Relay(kind, proc, port, data_dir, pinned, probe_path)


def wait_until_ready(relay: Relay) -> Relay:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if relay.proc.poll() is not None:
            raise RuntimeError(f"{relay.kind} exited at start-up: {relay.proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{relay.port}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return relay
        except OSError:
            time.sleep(0.05)
    relay.stop()
    raise RuntimeError(f"{relay.kind} did not come up on port {relay.port}")


# -- frames ------------------------------------------------------------------------------------


class FrameFactory:
    """Builds one sender's msg frames exactly as PROTOCOL.md §7.3 says: a fresh message key and
    IV, padded plaintext, per-recipient sequence numbers, the Merkle tree, and every recipient's
    key payload (key, position, seq, audit path) really RSA-OAEP-wrapped to its session key,
    signed with the sender's identity key. Real wraps cost N public-key operations per frame,
    so frames are pre-built before each phase.
    """

    def __init__(self, sender: bench_keys.BenchMember, recipients: list[bench_keys.BenchMember],
                 text_bytes: int, room: str = "lobby", encode=encode_frame):
        self.sender = sender
        self.encode = encode  # a WebSocket frame around the JSON, or (HTTP) the JSON itself
        self.room = room
        self.text = "x" * text_bytes
        self.pool: deque[tuple[str, bytes]] = deque()
        self.built_live = 0
        self.recipients = {r.sid: crypto.Recipient(r.sid, r.session.private_key.public_key(), 0)
                           for r in recipients}

    def drop_recipient(self, sid: str) -> None:
        if self.recipients.pop(sid, None) is not None:
            self.pool.clear()

    def build(self) -> tuple[str, bytes]:
        targets = []
        for sid, r in self.recipients.items():
            self.recipients[sid] = r = crypto.Recipient(sid, r.session_key, r.seq + 1)
            targets.append(r)
        s = self.sender
        frame = crypto.seal_message(identity=s.identity, sender_sid=s.sid, room=self.room, text=self.text,
                                    recipients=targets)
        return frame["id"], self.encode(json.dumps(frame, separators=(",", ":")).encode())

    async def prebuild_async(self, count: int) -> None:
        """Build `count` frames into the pool, returning to the loop every few ms. Frames cost
        ~1 ms (N = 10) to ~25 ms (N = 250) each and a phase's pool takes tens of seconds: built
        without yielding, no client answers a ping meanwhile and the relay (ping timeout 10 s)
        closes them all, so the phase measures 0 msgs/s (tests/test_bench.py)."""
        turn = time.monotonic()
        for _ in range(count):
            self.pool.append(self.build())
            if time.monotonic() - turn > 0.005:
                await asyncio.sleep(0)
                turn = time.monotonic()

    def jobs(self, count: int, chunk: int) -> list[tuple]:
        """`count` frames as jobs for _build_frames in another process, in `chunk`s, in order:
        the per-recipient sequence numbers advance here exactly as `count` build() calls would."""
        if not hasattr(self, "_identity_der"):
            self._identity_der = self.sender.identity.private_key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            self._public_ders = {sid: r.session_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                for sid, r in self.recipients.items()}
        out = []
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            targets = [(sid, self._public_ders[sid], r.seq) for sid, r in self.recipients.items()]
            out.append((self._identity_der, self.sender.sid, self.room, len(self.text), targets, size,
                        self.encode))
            for sid, r in self.recipients.items():
                self.recipients[sid] = crypto.Recipient(sid, r.session_key, r.seq + size)
        return out

    def next(self) -> tuple[str, bytes]:
        if self.pool:
            return self.pool.popleft()
        self.built_live += 1
        return self.build()


def _build_frames(job: tuple) -> list[tuple[str, bytes]]:
    """FrameFactory.build, `count` times, in a FrameBuilder process (see FrameFactory.jobs)."""
    identity_der, sender_sid, room, text_len, targets, count, encode = job
    identity = crypto.Identity.from_pkcs8(identity_der)
    keys = [(sid, serialization.load_der_public_key(der), seq) for sid, der, seq in targets]
    text = "x" * text_len
    frames = []
    for k in range(1, count + 1):
        frame = crypto.seal_message(identity=identity, sender_sid=sender_sid, room=room, text=text,
                                    recipients=[crypto.Recipient(sid, key, seq + k) for sid, key, seq in keys])
        frames.append((frame["id"], encode(json.dumps(frame, separators=(",", ":")).encode())))
    return frames


def _builder_init(cores: list[int]) -> None:
    try:
        os.sched_setaffinity(0, set(cores))  # undo the generator's pinning, which children inherit
    except (AttributeError, OSError):
        pass


class FrameBuilder:
    """Fills the senders' pools before a phase, in `workers` processes on every core.

    A frame costs ~0.4 ms (N = 10) to ~50 ms (N = 250) to build; a saturated phase against the
    faster relay takes tens of thousands of them at N = 10. Built in the generator's own
    process on its one core, that took minutes, so pools were sized from a guess and ran dry
    (docs/PERFORMANCE.md, "frames built live"). Between phases both cores are free: the
    relays only answer pings. The generator's loop keeps running meanwhile (it answers them).
    workers = 0 builds in this process, a few ms per loop turn (FrameFactory.prebuild_async).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def fill(self, factories: list[FrameFactory], per_factory: int) -> None:
        """Put `per_factory` fresh frames into each factory's pool (after what it holds)."""
        if per_factory <= 0:
            return
        if self.workers <= 0:
            for factory in factories:
                await factory.prebuild_async(per_factory)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_builder_init, initargs=(ALL_CPUS,))
        loop = asyncio.get_running_loop()
        n = max(1, len(factories[0].recipients)) if factories else 1
        chunk = max(1, 4000 // n)  # ~0.2 s of work a job: the pool stays balanced to the end
        work = [(factory, [loop.run_in_executor(self._pool, _build_frames, job)
                           for job in factory.jobs(per_factory, chunk)]) for factory in factories]
        for factory, futures in work:
            for frames in await asyncio.gather(*futures):
                factory.pool.extend(frames)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# -- the room of clients -------------------------------------------------------------------------


_MSG = b'{"v":2,"type":"msg"'
_ACK = b'{"v":2,"type":"ack","id":"'
_HELLO = b'{"v":2,"type":"hello"'
_WELCOME = b'{"v":2,"type":"welcome"'
_LEFT = b'{"v":2,"type":"left"'
_ERROR = b'{"v":2,"type":"error"'
_ID = b',"id":"'


class Room:
    """N joined clients of one relay and the counters the phases read."""

    def __init__(self, relay: Relay, members: list[bench_keys.BenchMember], senders: int, text_bytes: int,
                 transport: str = "websocket"):
        self.relay = relay
        self.members = members
        self.transport = transport
        self.clients: list = []  # WSClient, or httpclient.HttpClient for the HTTP transport
        self.by_client: dict = {}
        self.welcomes: dict[int, asyncio.Future] = {}
        encode = encode_frame if transport == "websocket" else bytes
        self.hellos: dict[int, asyncio.Future] = {}
        self.early_hellos: dict = {}
        self.factories = [FrameFactory(m, members, text_bytes, encode=encode) for m in members[:senders]]
        self.sent: dict[str, int] = {}  # id -> perf_counter_ns at write
        self.sender_of: dict[str, int] = {}
        self.latencies: list[int] = []
        self.record = False
        self.exclude: set[int] = set()  # client indexes whose deliveries are not recorded
        self.deliveries = 0
        self.acks = 0
        self.errors: dict[str, int] = {}
        self.on_ack = None
        self.left: list[str] = []

    def _on_text(self, client: WSClient, payload: bytes, now: int) -> None:
        if payload.startswith(_MSG):
            self.deliveries += 1
            if self.record:
                at = payload.find(_ID)
                sent = self.sent.get(payload[at + 7: at + 39].decode())
                if sent is not None and self.by_client[client] not in self.exclude:
                    self.latencies.append(now - sent)
        elif payload.startswith(_ACK):
            self.acks += 1
            if self.on_ack is not None:
                self.on_ack(payload[26:58].decode())
        elif payload.startswith(_HELLO):
            challenge = json.loads(payload)["challenge"]
            future = self.hellos.get(self.by_client.get(client))
            if future is None:
                self.early_hellos[client] = challenge  # read before the opener returned
            elif not future.done():
                future.set_result(challenge)
        elif payload.startswith(_WELCOME):
            future = self.welcomes.get(self.by_client[client])
            if future is not None and not future.done():
                future.set_result(True)
        elif payload.startswith(_LEFT):
            sid = json.loads(payload)["sid"]
            self.left.append(sid)
            for factory in self.factories:
                factory.drop_recipient(sid)
        elif payload.startswith(_ERROR):
            code = json.loads(payload).get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1
            for i, future in self.welcomes.items():
                if self.clients[i] is client and not future.done():
                    future.set_exception(RuntimeError(f"join refused: {payload[:200]!r}"))

    async def join_all(self, timeout: float = 120) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        opener = connect if self.transport == "websocket" else http_connect
        for i, member in enumerate(self.members):
            self.hellos[i] = loop.create_future()
            self.welcomes[i] = loop.create_future()
            client = await opener(HOST, self.relay.port, on_text=self._on_text)
            self.clients.append(client)
            self.by_client[client] = i
            if client in self.early_hellos:
                self.hellos[i].set_result(self.early_hellos.pop(client))
            challenge = await asyncio.wait_for(self.hellos[i], max(0.1, deadline - time.monotonic()))
            client.send_text(json.dumps(member.join_frame(challenge=challenge)))
            await asyncio.wait_for(self.welcomes[i], max(0.1, deadline - time.monotonic()))
        await asyncio.sleep(0.2)  # let the last joined frames land

    def send(self, sender: int) -> None:
        msg_id, frame = self.factories[sender].next()
        self.sent[msg_id] = time.perf_counter_ns()
        self.sender_of[msg_id] = sender
        self.clients[sender].send_raw(frame)

    def received_bytes(self) -> int:
        return sum(c.bytes_received for c in self.clients)

    async def drain(self, expected_deliveries: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.deliveries < expected_deliveries and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def open_loop(room: Room, rate: float, duration: float, warmup: float, exclude: set[int] = frozenset(),
                    builder: FrameBuilder | None = None) -> dict:
    """Offer `rate` messages/s (round robin over the senders) for warmup + duration seconds."""
    senders = len(room.factories)
    total_warm = int(rate * warmup)
    total = total_warm + int(rate * duration)
    per_sender = total // senders + 1
    if builder is not None:
        await builder.fill(room.factories, per_sender - min(len(f.pool) for f in room.factories))
    for factory in room.factories:
        await factory.prebuild_async(per_sender - len(factory.pool))
    room.exclude = set(exclude)
    room.latencies = []
    start_deliveries = room.deliveries
    t0 = time.perf_counter()
    late = 0
    for k in range(total):
        target = t0 + k / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1
        room.record = k >= total_warm
        room.send(k % senders)
    room.record = True
    # A client that stopped reading (the slow-consumer test's) never counts a delivery:
    # waiting for its share would only run the drain into its 10 s timeout.
    reading = sum(1 for client in room.clients if not client.paused)
    expected = start_deliveries + total * reading
    await room.drain(expected, timeout=10)
    room.record = False
    lat = room.latencies
    return {
        "offered_per_s": rate,
        "messages": total - total_warm,
        "latency_samples": len(lat),
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "max_ms": (max(lat) / 1e6) if lat else float("nan"),
        "late_sends": late,
        "missing_deliveries": max(0, expected - room.deliveries),
    }


async def closed_loop(room: Room, duration: float, warmup: float, window: int, settle: float = 0.5) -> dict:
    """Every sender keeps `window` messages in flight; a sender's ack releases its next one."""
    senders = len(room.factories)
    relay = room.relay
    running = True

    def on_ack(msg_id: str) -> None:
        # room.sent keeps the send time: other members may read this message after the ack.
        sender = room.sender_of.pop(msg_id, None)
        if running and sender is not None:
            room.send(sender)

    room.on_ack = on_ack
    room.record = False
    room.latencies = []
    room.exclude = set()
    live0 = sum(f.built_live for f in room.factories)
    for sender in range(senders):
        for _ in range(window):
            room.send(sender)
    await asyncio.sleep(warmup)
    room.record = True  # saturated latency: every delivery of the measured window
    a0, d0, b0, c0, t0 = room.acks, room.deliveries, room.received_bytes(), relay.cpu_seconds(), time.perf_counter()
    g0, m0 = time.process_time(), time.monotonic()
    await asyncio.sleep(duration)
    a1, d1, b1, c1, t1 = room.acks, room.deliveries, room.received_bytes(), relay.cpu_seconds(), time.perf_counter()
    g1, m1 = time.process_time(), time.monotonic()
    room.record = False
    rss = relay.rss_bytes()
    running = False
    await asyncio.sleep(max(settle, 0.2))  # the messages in flight arrive before the next phase
    room.on_ack = None
    room.sent.clear()
    lat, room.latencies = room.latencies, []
    elapsed = t1 - t0
    messages = max(1, a1 - a0)
    return {
        "window_monotonic": (m0, m1),
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "max_ms": (max(lat) / 1e6) if lat else float("nan"),
        "lag": relay.lag(m0, m1),  # read after the settle pause: the probe appends every 0.1 s
        "stalls": relay.stalls(m0, m1),
        "seconds": elapsed,
        "messages_per_s": (a1 - a0) / elapsed,
        "deliveries_per_s": (d1 - d0) / elapsed,
        "server_cpu_ms_per_msg": (c1 - c0) * 1000 / messages,
        # Per frame the server wrote: every acknowledged message went to all members. (Counting
        # the frames the generator read instead would charge the server for the generator's lag.)
        "server_cpu_us_per_delivery": (c1 - c0) * 1e6 / (messages * len(room.members)),
        "clients_closed": sum(1 for c in room.clients if c.closed.done()),
        "server_cpu_util": (c1 - c0) / elapsed,
        "generator_cpu_util": (g1 - g0) / elapsed,
        "egress_bytes_per_msg": (b1 - b0) / messages,
        "rss_mb": rss / 2**20,
        # frames this phase (warm-up included) had to build because its pool ran dry
        "built_live": sum(f.built_live for f in room.factories) - live0,
    }


def pool_per_sender(rate: float, seconds: float, senders: int, window: int, margin: float = 1.3,
                    cap: int = 20000) -> int:
    """Frames one sender needs for a closed loop of `seconds` (warm-up included) at `rate` acked
    msgs/s over all senders: its window, then one per ack, with a margin for a faster run."""
    return min(cap, window + math.ceil(rate * margin * seconds / senders))


async def saturated_rate(room: Room, window: int, warmup: float = 0.3, duration: float = 1.0) -> float | None:
    """A short closed loop that only sends what the pools hold (nothing is built live): acked
    msgs/s after `warmup`, until `duration` ends or a pool runs dry. None: a pool ran dry too soon
    to tell (give it more frames)."""
    running = True
    dry: list[tuple[float, int]] = []

    def on_ack(msg_id: str) -> None:
        sender = room.sender_of.pop(msg_id, None)
        if running and sender is not None:
            if room.factories[sender].pool:
                room.send(sender)
            elif not dry:
                dry.append((time.perf_counter(), room.acks))

    room.on_ack = on_ack
    room.record = False
    for sender in range(len(room.factories)):
        for _ in range(min(window, len(room.factories[sender].pool))):
            room.send(sender)
    await asyncio.sleep(warmup)
    a0, t0 = room.acks, time.perf_counter()
    while not dry and time.perf_counter() < t0 + duration:
        await asyncio.sleep(0.01)
    t1, a1 = dry[0] if dry else (time.perf_counter(), room.acks)
    running = False
    await asyncio.sleep(0.3)  # what is in flight lands before the next phase
    room.on_ack = None
    room.sent.clear()
    room.sender_of.clear()
    for factory in room.factories:
        factory.pool.clear()
    if t1 - t0 < duration / 2 or a1 <= a0:
        return None
    return (a1 - a0) / (t1 - t0)


async def calibrate(rooms: list[Room], builder: FrameBuilder, window: int, guess: float) -> float:
    """The fastest relay's saturated msgs/s, to size every phase's pool from: each relay in turn
    runs saturated_rate() on prebuilt frames; a pool that runs dry first is grown and tried again."""
    best = 0.0
    for room in rooms:
        rate = guess
        senders = len(room.factories)
        for _ in range(5):
            await builder.fill(room.factories, pool_per_sender(rate, 1.3, senders, window, margin=2.0))
            measured = await saturated_rate(room, window)
            if measured is not None:
                best = max(best, measured)
                break
            rate *= 4
        else:
            best = max(best, rate)  # never settled: the largest pool tried, and the phases will say if it was not enough
    return best


async def saturated_repeat(rooms: dict, builder: FrameBuilder, rate: float, seconds: float, window: int,
                           run_one, adapt: bool, tries: int = 3) -> tuple[dict, float, int]:
    """One repeat of a saturated phase on every relay, back to back, on the same prebuilt frames
    (the relays are separate processes with their own replay guards; building is N RSA wraps a
    frame). A phase that had to build frames live measured the generator, not the relay: with
    `adapt`, the repeat is run again with a pool 1.6x larger (at most `tries` times).
    Returns ({kind: result}, the rate the pools were sized for, the runs thrown away)."""
    thrown = 0
    while True:
        any_room = next(iter(rooms.values()))
        senders = len(any_room.factories)
        per_sender = pool_per_sender(rate, seconds, senders, window)
        for factory in any_room.factories:
            factory.pool.clear()
        await builder.fill(any_room.factories, per_sender)
        built = [list(factory.pool) for factory in any_room.factories]
        results = {}
        for kind, room in rooms.items():
            for factory, frames in zip(room.factories, built):
                factory.pool = deque(frames)
            results[kind] = await run_one(room)
            for factory in room.factories:
                factory.pool.clear()
        del built
        live = sum(r["built_live"] for r in results.values())
        if live == 0 or not adapt or thrown + 1 >= tries:
            return results, rate, thrown
        thrown += 1
        rate *= 1.6
        log(f"  {live} frames were built live: the pool ran dry; again with pools for {rate:,.0f} msgs/s")


async def saturated_phase(rooms: dict, builder: FrameBuilder, s: Settings, n: int,
                          window: int) -> tuple[dict[str, list], float, int]:
    """`s.repeats` closed loops of `window` in flight per sender on every room's relay, each
    repeat on the same prebuilt frames, the pools sized by calibrate() (with `s.calibrate`).
    Returns ({kind: [one result per repeat]}, the rate the pools were sized for, the runs thrown
    away because a pool ran dry)."""
    rate = s.expected_msg_rate / n
    if s.calibrate:
        rate = await calibrate(list(rooms.values()), builder, window, rate)
        log(f"  calibrated: {rate:,.0f} msgs/s saturates the faster relay")
    runs: dict[str, list] = {kind: [] for kind in rooms}
    thrown = 0
    for _ in range(s.repeats):
        repeat, rate, redone = await saturated_repeat(
            rooms, builder, rate, s.warmup + s.closed_seconds + 0.3, window,
            lambda room: closed_loop(room, s.closed_seconds, s.warmup, window, s.settle), adapt=s.calibrate)
        thrown += redone
        for kind in rooms:
            runs[kind].append(repeat[kind])
    return runs, rate, thrown


@dataclass
class Settings:
    sizes: tuple[int, ...] = (10, 50, 100, 250)
    senders: int = 10
    rate: float = 20.0
    open_seconds: float = 5.0
    closed_seconds: float = 5.0
    warmup: float = 1.0
    window: int = 2
    text_bytes: int = 200
    idle: tuple[int, ...] = (1000, 5000)
    slow_size: int = 100
    slow_rate: float = 100.0
    slow_seconds: float = 8.0
    relays: tuple[str, ...] = ("securechat", "reference")
    repeats: int = 3
    # None: the reference runs with Python's default collector; a tuple gives it these
    # gc.set_threshold() values (securechat's own, for a like-for-like comparison).
    reference_gc: tuple[int, ...] | None = None
    pin: bool = True  # move this process to the second core (off for the test suite)
    # Instead of securechat vs the reference relay: securechat's HTTP fallback vs its WebSocket.
    transports: bool = False
    # Scenarios (bench/scenarios.py): "rotation", "rotation-open" and "storm"; () runs the fan-out
    # comparison only.
    scenarios: tuple[str, ...] = ("rotation", "rotation-open", "storm")
    rotation_sizes: tuple[int, ...] = (10, 100)
    rotation_window: int = 16  # in flight per sender: the relay, not the generator, is the limit
    rotation_seconds: float = 10.0
    rotation_log_bytes: int | None = None  # None: the shipped default (log.max_bytes, 10 MiB)
    # rotation-open: offered rate as a share of the rotating relay's saturated msgs/s
    rotation_open_share: float = 0.3
    # A room holds at most 256 (limits.max_participants, capped by protocol v2's MAX_RECIPIENTS:
    # the Merkle path must fit in the wrapped key, PROTOCOL.md §7.3): a storm of more fills
    # several rooms at once, as a restart does (bench/scenarios.py storm_layout).
    storm_size: int = 256
    storm_rooms: int | None = None  # None: as many as storm_size needs at max_participants each
    storm_concurrency: int = 200  # TCP handshakes outstanding at once
    storm_timeout: float = 90.0
    storm_settle: float = 2.0  # seconds after completion before RSS is read again
    settle: float = 0.5  # pause for in-flight messages after a closed loop, and for idle sockets to open
    expected_msg_rate: float = 40000.0  # deliveries/s: the first guess of the calibration
    # Size each saturated phase's pools from a short closed loop on every relay (calibrate()),
    # and run a repeat again when a pool ran dry; off: pools sized from expected_msg_rate only.
    calibrate: bool = True
    build_workers: int = 2  # processes that build frames between phases (0: in this process)


def _median_run(runs: list[dict]) -> dict:
    """Per-field median over repeats (the machine may be shared; medians resist outliers)."""
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = value
    out["repeats"] = len(runs)
    return out


async def run_size(n: int, s: Settings, workdir: Path, builder: FrameBuilder | None = None) -> list[dict]:
    """All relays at room size N, measured in alternation (A B A B ...) so both see the same
    machine conditions; each figure is the median over `repeats`."""
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    relays, rooms = {}, {}
    own_builder = builder is None
    builder = builder or FrameBuilder(s.build_workers)
    try:
        relays.update(start_relays(s.relays, workdir, reference_gc=s.reference_gc))
        for kind in s.relays:
            rooms[kind] = Room(relays[kind], members, senders, s.text_bytes)
            await rooms[kind].join_all()
        results = {kind: {"relay": kind, "n": n, "senders": senders, "pinned": relays[kind].pinned,
                          "rss_joined_mb": relays[kind].rss_bytes() / 2**20} for kind in s.relays}
        opens: dict[str, list] = {kind: [] for kind in s.relays}
        for _ in range(s.repeats):
            for kind in s.relays:
                opens[kind].append(await open_loop(rooms[kind], s.rate, s.open_seconds, s.warmup, builder=builder))
        closeds, rate, thrown = await saturated_phase(rooms, builder, s, n, s.window)
        for kind in s.relays:
            results[kind]["open"] = _median_run(opens[kind])
            results[kind]["closed"] = _median_run(closeds[kind])
            # Not a median: a phase with any frame built live measured the generator.
            results[kind]["closed"]["built_live"] = sum(r["built_live"] for r in closeds[kind])
            results[kind]["closed"]["pool_rate"] = rate
            results[kind]["closed"]["repeats_thrown_away"] = thrown
            results[kind]["closed_repeats"] = closeds[kind]
            results[kind]["errors"] = dict(rooms[kind].errors)
        return [results[kind] for kind in s.relays]
    finally:
        await close_all(rooms, relays, builder if own_builder else None)


async def close_all(rooms: dict, relays: dict, builder: "FrameBuilder | None" = None) -> None:
    """A measurement's end: its rooms' clients first, then, once their closes are out, its relays
    (and the frame builder it made for itself)."""
    for room in rooms.values():
        room.close()
    await asyncio.sleep(0.1)
    for relay in relays.values():
        relay.stop()
    if builder is not None:
        builder.close()


async def run_slow(relay: Relay, s: Settings) -> dict:
    """Open loop at N = slow_size, first with every client reading, then, in the same room,
    with one of them stalled."""
    n = s.slow_size
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    out = {"relay": relay.kind, "n": n, "offered_per_s": s.slow_rate}
    room = Room(relay, members, senders, s.text_bytes)
    try:
        await room.join_all()
        stalled = n - 1  # a non-sender
        for label in ("baseline", "stalled"):
            if label == "stalled":
                room.clients[stalled].stop_reading()
            left, errors = len(room.left), dict(room.errors)
            rss0 = relay.rss_bytes()
            res = await open_loop(room, s.slow_rate, s.slow_seconds, s.warmup, exclude={stalled})
            res["rss_growth_mb"] = (relay.rss_bytes() - rss0) / 2**20
            res["stalled_closed_with"] = room.clients[stalled].close_code if label == "stalled" else None
            res["left_frames"] = len(room.left) - left
            res["errors"] = {code: count - errors.get(code, 0) for code, count in room.errors.items()
                             if count > errors.get(code, 0)}
            out[label] = res
    finally:
        room.close()
        await asyncio.sleep(0.1)
        relay.stop()
    return out


async def run_idle(relay: Relay, count: int, concurrency: int = 100, settle: float = 1.0) -> dict:
    kind = relay.kind
    clients: list[WSClient] = []
    try:
        await asyncio.sleep(0.3)
        rss0 = relay.rss_bytes()
        for start in range(0, count, concurrency):
            batch = await asyncio.gather(*[
                connect(HOST, relay.port) for _ in range(min(concurrency, count - start))
            ])
            clients.extend(batch)
        await asyncio.sleep(settle)
        open_now = sum(1 for c in clients if not c.closed.done())
        rss1 = relay.rss_bytes()
        return {"relay": kind, "connections": count, "open": open_now, "rss_base_mb": rss0 / 2**20,
                "rss_mb": rss1 / 2**20, "kib_per_connection": (rss1 - rss0) / 1024 / count}
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.2)
        relay.stop()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_all(s: Settings) -> dict:
    raise_nofile(NOFILE)
    rotating = "rotation" in s.scenarios or "rotation-open" in s.scenarios
    most = max(s.sizes + (s.slow_size,) + (s.rotation_sizes if rotating else ())
               + ((s.storm_size,) if "storm" in s.scenarios else ()))
    log(f"generating keys for {most} members ...")
    bench_keys.members(most)
    pinned = pin_generator() if s.pin else "unpinned"
    results: dict = {"settings": s.__dict__.copy(), "generator": pinned, "relays": relay_pinning()[1], "runs": [], "idle": [], "slow": [],
                     "rotation": [], "rotation_open": [], "storm": []}
    builder = FrameBuilder(s.build_workers)
    with tempfile.TemporaryDirectory(prefix="securechat-bench-") as tmp:
        try:
            return await _run_all(s, results, Path(tmp), builder)
        finally:
            builder.close()


async def _run_all(s: Settings, results: dict, workdir: Path, builder: FrameBuilder) -> dict:
    if s.transports:
        from .transports import run_transport_size

        results["transports"] = []
        for n in s.sizes:
            log(f"N={n}: websocket vs http, {s.repeats} repeats ...")
            results["transports"].extend(await run_transport_size(n, s, workdir))
        return results
    for n in s.sizes:
        log(f"N={n}: {' vs '.join(s.relays)}, {s.repeats} repeats ...")
        results["runs"].extend(await run_size(n, s, workdir, builder))
    # Each test below gets fresh relays, booted together (a relay waiting its turn is idle).
    if s.slow_size:
        relays = start_relays(s.relays, workdir, reference_gc=s.reference_gc)
        try:
            for kind in s.relays:
                log(f"{kind}: slow consumer at N={s.slow_size} ...")
                results["slow"].append(await run_slow(relays[kind], s))
        finally:
            for relay in relays.values():
                relay.stop()
    for count in s.idle:
        # Repeated, alternating, like the fan-out runs: the reference's figure moves by ±0.5
        # KiB from run to run, a sixth of the margin the 1.2x target leaves.
        for repeat in range(s.repeats):
            relays = start_relays(s.relays, workdir)
            try:
                for kind in (s.relays if repeat % 2 == 0 else s.relays[::-1]):
                    log(f"{kind}: {count} idle connections ({repeat + 1}/{s.repeats}) ...")
                    results["idle"].append(await run_idle(relays[kind], count, settle=2 * s.settle))
            finally:
                for relay in relays.values():
                    relay.stop()
    from . import scenarios

    if "rotation" in s.scenarios:
        for n in s.rotation_sizes:
            log(f"rotation: N={n} saturated ({s.rotation_window} in flight), {s.repeats} repeats ...")
            results["rotation"].extend(await scenarios.run_rotation_size(n, s, workdir, builder))
    if "rotation-open" in s.scenarios:
        results["rotation_open"] = []
        for n in s.rotation_sizes:
            log(f"rotation at a fixed rate: N={n}, rotating and not, {s.repeats} repeats ...")
            results["rotation_open"].extend(await scenarios.run_rotation_open(n, s, workdir, builder))
    if "storm" in s.scenarios and s.storm_size:
        results["storm"].extend(await scenarios.run_storm(s, workdir))
    return results
