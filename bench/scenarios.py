"""The benchmark's scenarios beyond steady fan-out (docs/PERFORMANCE.md):

- rotation: the closed loop saturating the relay (W messages in flight per sender) long enough
  for the ciphertext log to rotate several times at its default size, with bench/probe.py inside
  both relays: saturated p50/p99 delivery latency, CPU per message, and the event loop's lag
  (how late a 2 ms periodic callback fired: p99, max, callbacks more than 10 ms late).
- storm: a reconnect storm. M participants join one room all at once (every client connects
  and sends its join as soon as the hello arrives, as browsers do after a restart) against a
  paced join of the same M (one at a time, each waiting for its welcome), each on a fresh
  relay: time until every client knows the whole room, RSS after each, clients the server
  closed as stalled readers (4002), and the loop's lag during the storm.

Both use the same real frames, keys and relays as bench/runner.py; everything talks to
127.0.0.1 and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

from . import keys as bench_keys
from .runner import (
    BENCH_ENV,
    HOST,
    FrameBuilder,
    Relay,
    Room,
    close_all,
    calibrate,
    closed_loop,
    launch_relay,
    log,
    open_loop,
    saturated_repeat,
    start_relays,
    wait_until_ready,
)
from .wsclient import WSClient, connect

_HELLO = b'{"v":2,"type":"hello"'
_WELCOME = b'{"v":2,"type":"welcome"'
_JOINED = b'{"v":2,"type":"joined"'
_JOINS = b'{"v":2,"type":"joins"'  # several joins in one frame (PROTOCOL.md §6.2)
_LEFT = b'{"v":2,"type":"left"'
_ERROR = b'{"v":2,"type":"error"'
_SID = b'"sid":'
TOO_SLOW = 4002


# -- rotation during saturation ----------------------------------------------------------------


def rotated_stamps(relay: Relay) -> set[str]:
    if relay.data_dir is None:
        return set()
    # The log lives in the data directory; rotated files are ciphertext-<stamp>.jsonl[.gz].
    return {p.name.split(".")[0] for p in relay.data_dir.glob("ciphertext-*.jsonl*")}


async def _watch_rotations(relay: Relay, seen: set[str], stop: asyncio.Event) -> None:
    """Every rotated file that appears (retention may delete old ones before the phase ends)."""
    while not stop.is_set():
        seen |= rotated_stamps(relay)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass


async def run_rotation_size(n: int, s, workdir: Path, builder: FrameBuilder | None = None) -> list[dict]:
    """Both relays under the probe at room size N, alternating repeats, saturated closed loop."""
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    env = {"SECURECHAT_LOG_MAX_BYTES": str(s.rotation_log_bytes)} if s.rotation_log_bytes else {}
    relays = start_relays(s.relays, workdir, reference_gc=s.reference_gc, probe=True, env_extra=env)
    rooms: dict[str, Room] = {}
    runs: dict[str, list[dict]] = {kind: [] for kind in s.relays}
    own_builder = builder is None
    builder = builder or FrameBuilder(s.build_workers)
    try:
        for kind in s.relays:
            rooms[kind] = Room(relays[kind], members, senders, s.text_bytes)
            await rooms[kind].join_all()
        rate = s.expected_msg_rate / n
        if s.calibrate:
            rate = await calibrate([rooms[kind] for kind in s.relays], builder, s.rotation_window, rate)

        async def one(room: Room) -> dict:
            before = rotated_stamps(room.relay)
            seen: set[str] = set(before)
            stop = asyncio.Event()
            watcher = asyncio.create_task(_watch_rotations(room.relay, seen, stop))
            result = await closed_loop(room, s.rotation_seconds, s.warmup, s.rotation_window, s.settle)
            stop.set()
            await watcher
            result["rotations"] = len(seen - before)
            return result

        for _ in range(s.repeats):
            repeat, rate, _thrown = await saturated_repeat(
                rooms, builder, rate, s.warmup + s.rotation_seconds + 0.3, s.rotation_window, one, adapt=s.calibrate)
            for kind in s.relays:
                runs[kind].append(repeat[kind])
        out = []
        for kind in s.relays:
            repeats = runs[kind]
            out.append({
                "relay": kind, "n": n, "window": s.rotation_window, "seconds": s.rotation_seconds,
                "messages_per_s": statistics.median(r["messages_per_s"] for r in repeats),
                "server_cpu_ms_per_msg": statistics.median(r["server_cpu_ms_per_msg"] for r in repeats),
                "clients_closed": max(r["clients_closed"] for r in repeats),
                **over_repeats(repeats),
                "errors": dict(rooms[kind].errors),
            })
        return out
    finally:
        await close_all(rooms, relays, builder if own_builder else None)


def over_repeats(repeats: list[dict]) -> dict:
    """What both rotation scenarios report of their repeats: latency medians, the loop's lag
    (the worst of any repeat, counts summed), rotations, frames built live, the stalls' causes."""
    return {
        "p50_ms": statistics.median(r["p50_ms"] for r in repeats),
        "p99_ms": statistics.median(r["p99_ms"] for r in repeats),
        "p99_ms_range": (min(r["p99_ms"] for r in repeats), max(r["p99_ms"] for r in repeats)),
        "lag_p99_ms": statistics.median(r["lag"]["p99_ms"] for r in repeats),
        "lag_max_ms": max(r["lag"]["max_ms"] for r in repeats),
        "lag_over_10ms": sum(r["lag"]["over_10ms"] for r in repeats),
        "lag_samples": sum(r["lag"]["samples"] for r in repeats),
        "rotations": sum(r["rotations"] for r in repeats),
        "built_live": sum(r["built_live"] for r in repeats),
        "stalls": merge_stalls([r["stalls"] for r in repeats]),
        "repeats": repeats,
    }


def merge_stalls(parts: list[dict]) -> dict:
    """probe.attribute() results of several repeats as one."""
    out = {"stalls": 0, "by_cause": {}, "unexplained": 0, "from_log": 0, "from_log_max_ms": 0.0, "events": {}}
    for part in parts:
        if not part:
            continue
        out["stalls"] += part["stalls"]
        out["unexplained"] += part["unexplained"]
        out["from_log"] += part.get("from_log", 0)
        out["from_log_max_ms"] = max(out["from_log_max_ms"], part.get("from_log_max_ms", 0.0))
        for cause, count in part["by_cause"].items():
            out["by_cause"][cause] = out["by_cause"].get(cause, 0) + count
        for name, e in part["events"].items():
            into = out["events"].setdefault(name, {"count": 0, "max_ms": 0.0, "total_ms": 0.0})
            into["count"] += e["count"]
            into["max_ms"] = max(into["max_ms"], e["max_ms"])
            into["total_ms"] += e["total_ms"]
    return out


NO_ROTATION = str(2**40)  # log.max_bytes for "rotation off": a 10-second phase never fills it


async def run_rotation_open(n: int, s, workdir: Path, builder: FrameBuilder | None = None) -> list[dict]:
    """Rotation at a fixed offered rate well under capacity (open loop), rotating and not.

    Saturated, the loop is never idle and its lag cannot tell a rotation's stall from the queue
    in front of it. Here two securechat relays under the probe, one with the log at its size
    (rotating every second or so) and one whose log never fills, get the same offered rate,
    `rotation_open_share` of the rotating one's saturated msgs/s, in alternating repeats: any
    difference in delivery latency and loop lag is the rotations', and the probe names what
    overlapped each callback more than 10 ms late."""
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    size = str(s.rotation_log_bytes) if s.rotation_log_bytes else None
    modes = {"on": {"SECURECHAT_LOG_MAX_BYTES": size} if size else {},
             "off": {"SECURECHAT_LOG_MAX_BYTES": NO_ROTATION}}
    launched = {mode: launch_relay("securechat", workdir, probe=True, env_extra=env) for mode, env in modes.items()}
    relays: dict[str, Relay] = {}
    rooms: dict[str, Room] = {}
    own_builder = builder is None
    builder = builder or FrameBuilder(s.build_workers)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    try:
        for mode, relay in launched.items():
            relays[mode] = wait_until_ready(relay)
        for mode in modes:
            rooms[mode] = Room(relays[mode], members, senders, s.text_bytes)
            await rooms[mode].join_all()
        saturated = s.expected_msg_rate / n
        if s.calibrate:
            saturated = await calibrate([rooms["on"]], builder, s.rotation_window, saturated)
        rate = max(1.0, saturated * s.rotation_open_share)
        total = int(rate * s.warmup) + int(rate * s.rotation_seconds)
        for _ in range(s.repeats):
            for mode in modes:
                room = rooms[mode]
                await builder.fill(room.factories, total // senders + 1)
                before = rotated_stamps(room.relay)
                seen: set[str] = set(before)
                stop = asyncio.Event()
                watcher = asyncio.create_task(_watch_rotations(room.relay, seen, stop))
                m0 = time.monotonic()
                result = await open_loop(room, rate, s.rotation_seconds, s.warmup)
                m1 = time.monotonic()
                await asyncio.sleep(max(s.settle, 0.2))  # the probe appends every 0.1 s
                stop.set()
                await watcher
                result["rotations"] = len(seen - before)
                result["lag"] = room.relay.lag(m0, m1)
                result["stalls"] = room.relay.stalls(m0, m1)
                result["built_live"] = sum(f.built_live for f in room.factories)
                for factory in room.factories:
                    factory.built_live = 0
                    factory.pool.clear()
                runs[mode].append(result)
        out = []
        for mode, repeats in runs.items():
            out.append({
                "relay": "securechat", "rotation": mode, "n": n, "offered_per_s": rate,
                "saturated_per_s": saturated, "seconds": s.rotation_seconds,
                "max_ms": max(r["max_ms"] for r in repeats),
                "late_sends": sum(r["late_sends"] for r in repeats),
                "missing_deliveries": sum(r["missing_deliveries"] for r in repeats),
                **over_repeats(repeats),
                "errors": dict(rooms[mode].errors),
            })
        return out
    finally:
        await close_all(rooms, launched, builder if own_builder else None)


# -- reconnect storm -----------------------------------------------------------------------------


DEFAULT_ROOM = "lobby"  # securechat's default room (server.room): /ws without ?room=


def storm_layout(size: int, rooms: int | None = None, cap: int | None = None) -> list[tuple[str, int]]:
    """The rooms a storm of `size` fills, as (name, members): `rooms` of them (None: as many as
    `size` needs at `cap` each, the relay's max_participants), sizes as even as possible. Room 0
    is the default room; the others are storm-1, storm-2, ... (names per relay/roomname.py)."""
    if cap is None:
        cap = int(BENCH_ENV.get("SECURECHAT_MAX_PARTICIPANTS", "256"))
    count = rooms if rooms else max(1, -(-size // cap))
    count = max(1, min(count, size))
    base, extra = divmod(size, count)
    return [(DEFAULT_ROOM if r == 0 else f"storm-{r}", base + (1 if r < extra else 0)) for r in range(count)]


class StormRoom:
    """M clients of one relay, spread over rooms, that each count the members they know of.

    Member i belongs to one room (`layout`: consecutive blocks of members), connects to
    /ws?room=<its room> and signs that room into its join. A client knows the members its
    welcome lists, plus every participant a later `joined` or `joins` carries, minus each `left`:
    counted as `"sid":` occurrences, without parsing the frames (a complete storm of 1,000 is
    ~10^6 roster entries; json.loads on all of them would make the generator, not the relay, the
    bottleneck). `you` in the welcome is not counted. A client is complete when it knows every
    member of its own room; a refused join (an `error` frame instead of a welcome), a hello
    naming another room, or a connection that never opened is counted, settles that client and
    shrinks what its room's others can know, so the run ends without waiting for its deadline
    and reports the refusals instead of a time.
    """

    def __init__(self, relay: Relay, members: list[bench_keys.BenchMember], roster_frames: bool,
                 layout: list[tuple[str, int]] | None = None):
        self.relay = relay
        self.members = members
        self.roster_frames = roster_frames  # the reference relay sends no roster at all
        self.layout = layout or [(DEFAULT_ROOM, len(members))]
        assert sum(size for _, size in self.layout) == len(members)
        self.room_of = [r for r, (_, size) in enumerate(self.layout) for _ in range(size)]
        self.gone = [0] * len(self.layout)  # per room: members refused or never connected
        self.clients: list[WSClient] = []
        self.index: dict[WSClient, int] = {}
        self.known = [0] * len(members)
        self.welcomed = [False] * len(members)
        self.refused = [False] * len(members)
        self.done_at: list[float | None] = [None] * len(members)
        self.errors: dict[str, int] = {}
        self.frames = 0
        self.roster_bytes = 0
        self.all_done = asyncio.get_running_loop().create_future()
        self.welcome_futures: dict[int, asyncio.Future] = {}
        self.remaining = len(members)
        self.connect_failed = 0

    def expected(self, i: int) -> int:
        """How many members client i's room has (its own included), refused ones not counted."""
        r = self.room_of[i]
        return self.layout[r][1] - self.gone[r]

    def _on_open(self, client: WSClient, i: int) -> None:
        self.index[client] = i
        self.clients.append(client)

    def _on_text(self, client: WSClient, payload: bytes, now: int) -> None:
        i = self.index[client]
        self.frames += 1
        if payload.startswith(_HELLO):
            hello = json.loads(payload)
            room = self.layout[self.room_of[i]][0]
            if self.roster_frames and hello.get("room") != room:  # the reference names no rooms
                self._refuse(i, "hello_names_another_room")
                return
            client.send_text(json.dumps(self.members[i].join_frame(room=room, challenge=hello["challenge"])))
            return
        if payload.startswith(_WELCOME):
            self.welcomed[i] = True
            self.roster_bytes += len(payload)
            self.known[i] += payload.count(_SID) - 1
            future = self.welcome_futures.get(i)
            if future is not None and not future.done():
                future.set_result(True)
        elif payload.startswith(_JOINED) or payload.startswith(_JOINS):
            self.roster_bytes += len(payload)
            self.known[i] += payload.count(_SID)
        elif payload.startswith(_LEFT):
            self.known[i] -= 1
        elif payload.startswith(_ERROR):
            if not self.welcomed[i]:
                self._refuse(i, json.loads(payload).get("code", "?"))
            else:
                code = json.loads(payload).get("code", "?")
                self.errors[code] = self.errors.get(code, 0) + 1
            return
        else:
            return
        self._check(i)

    def _refuse(self, i: int, code: str | None) -> None:
        """Client i will not be a member: count why (None: its connection never opened, counted
        in connect_failed), settle it, and tell its room's others."""
        if code is not None:
            self.errors[code] = self.errors.get(code, 0) + 1
        self._gone(i)
        self.refused[i] = True
        future = self.welcome_futures.get(i)
        if future is not None and not future.done():
            future.set_result(False)

    def _gone(self, i: int) -> None:
        if self.refused[i] or self.done_at[i] is not None:
            return
        r = self.room_of[i]
        self.gone[r] += 1
        self._settle(i)
        for j, room in enumerate(self.room_of):  # its room's others now have one fewer to know
            if room == r:
                self._check(j)

    def _check(self, i: int) -> None:
        if self.done_at[i] is not None or not self.welcomed[i] or self.refused[i]:
            return
        if self.roster_frames and self.known[i] < self.expected(i):
            return
        self._settle(i)

    def _settle(self, i: int) -> None:
        self.done_at[i] = time.monotonic()
        self.remaining -= 1
        if self.remaining == 0 and not self.all_done.done():
            self.all_done.set_result(self.done_at[i])

    def refusals(self) -> int:
        return sum(self.gone)

    def wrong_rosters(self) -> int:
        """Admitted clients whose count of members is not their own room's size: fewer is an
        incomplete roster, more is a member of another room (or a duplicate) in it."""
        if not self.roster_frames:
            return 0
        return sum(1 for i in range(len(self.members))
                   if self.welcomed[i] and not self.refused[i] and self.known[i] != self.expected(i))

    async def open_one(self, i: int) -> WSClient:
        name = self.layout[self.room_of[i]][0]
        path = "/ws" if name == DEFAULT_ROOM else f"/ws?room={name}"
        return await connect(HOST, self.relay.port, path=path, on_text=self._on_text,
                             on_open=lambda client: self._on_open(client, i), timeout=30)

    async def paced(self, timeout: float) -> None:
        """One at a time: the next client connects once the previous one's welcome (or refusal)
        arrived."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        for i in range(len(self.members)):
            self.welcome_futures[i] = loop.create_future()
            try:
                await self.open_one(i)
            except (OSError, asyncio.TimeoutError):
                self.connect_failed += 1
                self._refuse(i, None)
                continue
            await asyncio.wait_for(self.welcome_futures[i], max(0.1, deadline - time.monotonic()))

    async def storm(self, concurrency: int) -> None:
        """Everyone at once, every room interleaved (member i of each room before member i + 1 of
        any); at most `concurrency` TCP handshakes outstanding (the generator's accept queue, not a
        pacing: with 1,000 they all start within a fraction of a second)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with gate:
                try:
                    await self.open_one(i)
                except (OSError, asyncio.TimeoutError):
                    self.connect_failed += 1  # the relay did not complete the upgrade in 30 s
                    self._refuse(i, None)

        starts, at = [], 0
        for _, size in self.layout:
            starts.append(at)
            at += size
        order = [starts[r] + k for k in range(max(size for _, size in self.layout))
                 for r, (_, size) in enumerate(self.layout) if k < size]
        await asyncio.gather(*(one(i) for i in order))

    def dropped_slow(self) -> int:
        return sum(1 for c in self.clients if c.close_code == TOO_SLOW)

    def closed(self) -> int:
        return sum(1 for c in self.clients if c.closed.done())

    def close(self) -> None:
        for client in self.clients:
            client.close()


async def _rss_peak(relay: Relay, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], relay.rss_bytes())
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


async def storm_once(relay: Relay, members, mode: str, s, layout: list[tuple[str, int]] | None = None) -> dict:
    room = StormRoom(relay, members, roster_frames=relay.kind == "securechat", layout=layout)
    await asyncio.sleep(0.3)
    rss0 = relay.rss_bytes()
    peak = [rss0]
    stop = asyncio.Event()
    watcher = asyncio.create_task(_rss_peak(relay, peak, stop))
    c0 = relay.cpu_seconds()
    t0 = time.monotonic()
    settled = None
    try:
        if mode == "paced":
            await room.paced(timeout=s.storm_timeout)
        else:
            await room.storm(concurrency=s.storm_concurrency)
        connected_in = time.monotonic() - t0
        try:
            done = await asyncio.wait_for(asyncio.shield(room.all_done), max(0.1, t0 + s.storm_timeout - time.monotonic()))
            settled = done - t0
        except asyncio.TimeoutError:
            pass
        t1 = time.monotonic()
        cpu = relay.cpu_seconds() - c0
        await asyncio.sleep(max(s.storm_settle, 0.2))  # the probe appends its samples every 0.1 s
        stop.set()
        await watcher
        rss1 = relay.rss_bytes()
        m = len(members)
        refused = room.refusals()
        wrong = room.wrong_rosters()
        return {
            "relay": relay.kind, "mode": mode, "participants": m,
            "rooms": [size for _, size in room.layout], "room_names": [name for name, _ in room.layout],
            "connected_s": connected_in,
            # None: not every client knew every member of its own room by the deadline, or some
            # joins were refused or never connected (then the run is not a complete storm)
            "complete_s": settled if settled is not None and refused == 0 and wrong == 0 else None,
            "settled_s": settled,  # every client either complete or refused
            "complete_clients": sum(1 for i in range(m) if room.done_at[i] is not None and not room.refused[i]),
            "refused": refused,
            "wrong_rosters": wrong,
            "known": list(room.known), "room_of": list(room.room_of),
            "server_cpu_s": cpu,
            "rss_before_mb": rss0 / 2**20, "rss_peak_mb": peak[0] / 2**20, "rss_after_mb": rss1 / 2**20,
            "kib_per_participant": (rss1 - rss0) / 1024 / m,
            "dropped_4002": room.dropped_slow(), "closed": room.closed(),
            "errors": dict(room.errors), "roster_mb": room.roster_bytes / 2**20,
            "connect_failed": room.connect_failed,
            "frames": room.frames,
            "lag": relay.lag(t0, t1),
        }
    finally:
        stop.set()
        room.close()
        await asyncio.sleep(0.2)


async def run_storm(s, workdir: Path) -> list[dict]:
    """For each relay and repeat: a paced join of M on one fresh relay, then a storm of M on
    another, the M spread over `storm_rooms` rooms (None: as many as M needs at the relay's
    max_participants each; 1,000 -> 4 rooms of 250)."""
    members = bench_keys.members(s.storm_size)
    layout = storm_layout(s.storm_size, s.storm_rooms)
    # Every client comes from 127.0.0.1: that address is in len(layout) rooms at once.
    env = {"SECURECHAT_MAX_ROOMS_PER_ADDRESS": str(max(16, len(layout)))}
    out = []
    for repeat in range(s.repeats):
        for mode in ("paced", "storm"):
            relays = start_relays(s.relays, workdir, reference_gc=s.reference_gc, probe=True, env_extra=env)
            try:
                for kind in s.relays:
                    log(f"{kind}: {mode} join of {s.storm_size} into {len(layout)} room(s) "
                        f"({repeat + 1}/{s.repeats}) ...")
                    row = await storm_once(relays[kind], members, mode, s, layout)
                    row["repeat"] = repeat
                    out.append(row)
            finally:
                for relay in relays.values():
                    relay.stop()
    return out
