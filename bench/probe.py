"""An event-loop lag probe inside a relay process: python -m bench.probe OUT MODULE [ARGS...].

Runs MODULE as __main__ (`cli serve ...` for the real `securechat serve`, or
`bench.reference_relay ...`) with one addition: as soon as the process's asyncio loop runs, a
callback is scheduled every INTERVAL on that loop, and how late each one fires is recorded. A
callback can only be late because something else held the loop (a rotation's fsync, a long
fan-out, a garbage collection) or the process had no CPU; that lateness is the stall every
message arriving meanwhile waited for too.

Samples go to OUT as packed (time.monotonic() seconds, lateness seconds, seconds the loop's
thread waited for a CPU since the previous callback, seconds it ran on one, both from /proc's
schedstat) doubles, appended a
few times a second, so the benchmark can cut out the samples of one phase by time (the clock is
the system-wide CLOCK_MONOTONIC, the same in every process). Costs one tiny callback per
interval (2 ms: ~0.3 % of a core), which is why the CPU comparison runs without it.

So that a late callback can be told apart by its cause, OUT.events gets (start, seconds, kind)
doubles of what can hold the loop (EVENT_NAMES): every garbage collection (gc.callbacks, by
generation, and whether the loop's thread ran it or another thread, which holds the GIL all the
same), and in securechat the ciphertext log's work: a rotation's part on the appending thread
(rename and open), any fsync on the loop's thread, appends that took over 0.5 ms, and each
background rotation job (fsync, gzip, retention) from start to end. attribute() then names, for
every callback more than 10 ms late, the events that overlapped its stall, and where the loop's
thread spent it: running (its own code and system calls: a long loop turn), waiting for a CPU
(another process or thread had it) or asleep (the GIL held by another thread, or a system call
waiting in the kernel). Only the last two can be another thread's doing, a rotation's among them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import runpy
import struct
import sys
import threading
import time
from array import array
from pathlib import Path

INTERVAL = float(os.environ.get("BENCH_PROBE_INTERVAL", "0.002"))
FLUSH_EVERY = 0.1  # seconds between appends to the file (read samples this much later)
SAMPLE = struct.Struct("=dddd")
EVENT = struct.Struct("=ddd")
# kind -> name; a collection by another thread than the loop's is 10 + its generation
EVENT_NAMES = {0: "gc gen 0", 1: "gc gen 1", 2: "gc gen 2", 10: "gc gen 0 (other thread)",
               11: "gc gen 1 (other thread)", 12: "gc gen 2 (other thread)", 20: "rotation on the loop",
               21: "fsync on the loop", 22: "log append > 0.5 ms", 30: "rotation job (background)"}
ON_LOOP_KINDS = (0, 1, 2, 10, 11, 12, 20, 21, 22)  # events that hold the loop (or its GIL) themselves


class Events:
    """(start, seconds, kind) records from any thread, written out with the lag samples."""

    def __init__(self, out: Path):
        self.out = open(out, "ab", buffering=0)
        self.records = array("d")
        self.loop_thread = threading.get_ident()
        self._gc_start = {}
        gc.callbacks.append(self._gc)

    def add(self, start: float, seconds: float, kind: int) -> None:
        self.records.extend((start, seconds, float(kind)))  # one C call: atomic under the GIL

    def on_loop(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def _gc(self, phase: str, info: dict) -> None:
        now = time.monotonic()
        ident = threading.get_ident()
        if phase == "start":
            self._gc_start[ident] = now
        else:
            start = self._gc_start.pop(ident, now)
            self.add(start, now - start, info["generation"] + (0 if ident == self.loop_thread else 10))

    def flush(self) -> None:
        if self.records:
            data, self.records = self.records, array("d")
            self.out.write(data.tobytes())

    def timed(self, function, kind: int, loop_only: bool = False, over: float = 0.0):
        def wrapper(*args, **kwargs):
            if loop_only and not self.on_loop():
                return function(*args, **kwargs)
            start = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                took = time.monotonic() - start
                if took >= over:
                    self.add(start, took, kind)
        return wrapper

    def instrument_log(self) -> None:
        """Time the ciphertext log's work (securechat only; the reference has no log)."""
        try:
            from securechat.storage import ciphertext_log as cl
        except ImportError:
            return
        cl.CiphertextLog._rotate_locked = self.timed(cl.CiphertextLog._rotate_locked, 20, loop_only=True)
        cl.CiphertextLog._write = self.timed(cl.CiphertextLog._write, 22, loop_only=True, over=0.0005)
        cl.CiphertextLog._compress_and_prune = self.timed(cl.CiphertextLog._compress_and_prune, 30)
        cl.os.fsync = self.timed(os.fsync, 21, loop_only=True)


class LagProbe:
    def __init__(self, loop: asyncio.AbstractEventLoop, out: Path, interval: float = INTERVAL,
                 events: Events | None = None):
        self.loop = loop
        self.events = events
        self.out = open(out, "ab", buffering=0)
        self.interval = interval
        self.samples = array("d")
        self.next_flush = time.monotonic() + FLUSH_EVERY
        try:
            self.schedstat = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self.schedstat = None  # not Linux: the CPU wait is recorded as 0
        self.ran, self.waited = self.cpu_times()
        self.due = loop.time() + interval
        loop.call_at(self.due, self.tick)

    def cpu_times(self) -> tuple[float, float]:
        """Seconds this thread has run on a CPU, and spent runnable but waiting for one."""
        if self.schedstat is None:
            return 0.0, 0.0
        ran, waited = os.pread(self.schedstat, 128, 0).split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9

    def tick(self) -> None:
        now = self.loop.time()  # the loop's clock is time.monotonic()
        ran, waited = self.cpu_times()
        self.samples.extend((now, now - self.due, waited - self.waited, ran - self.ran))
        self.ran, self.waited = ran, waited
        # The next one is due one interval after it was planned, not after it ran: a stall shows
        # once, at its full length, and later callbacks are not pushed back by it.
        self.due = max(self.due + self.interval, now)
        self.loop.call_at(self.due, self.tick)
        if now >= self.next_flush:
            self.flush()
            self.next_flush = now + FLUSH_EVERY

    def flush(self) -> None:
        if self.samples:
            self.out.write(self.samples.tobytes())
            del self.samples[:]
        if self.events is not None:
            self.events.flush()


def _records(path: Path, width: int) -> array:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        data = b""
    values = array("d")
    values.frombytes(data[: len(data) - len(data) % (8 * width)])
    return values


def read_timed(path: Path, since: float | None = None,
               until: float | None = None) -> list[tuple[float, float, float, float]]:
    """(fired at, lateness, CPU wait and CPU time since the previous callback) in seconds of every
    probe callback that fired within [since, until]."""
    values = _records(path, 4)
    return [tuple(values[i:i + 4]) for i in range(0, len(values), 4)
            if (since is None or values[i] >= since) and (until is None or values[i] <= until)]


def read_samples(path: Path, since: float | None = None, until: float | None = None) -> list[float]:
    """Lateness in seconds of every probe callback that fired within [since, until]."""
    return [late for _, late, _, _ in read_timed(path, since, until)]


def events_path(path: Path) -> Path:
    return Path(f"{path}.events")


def read_events(path: Path, since: float | None = None, until: float | None = None) -> list[tuple[float, float, int]]:
    """(start, seconds, kind) of every event that overlapped [since, until] (path: the samples' file)."""
    values = _records(events_path(path), 3)
    out = []
    for i in range(0, len(values), 3):
        start, took = values[i], values[i + 1]
        if (until is None or start <= until) and (since is None or start + took >= since):
            out.append((start, took, int(values[i + 2])))
    return out


NO_CPU = "no CPU (other processes ran)"
RAN = "the loop's own work (its thread ran)"
ASLEEP = "the loop's thread asleep (GIL or kernel)"
LOG_KINDS = (20, 21, 22)  # the ciphertext log's work on the loop's thread
ROTATION_JOB = 30


def attribute(timed: list[tuple[float, float, float, float]], events: list[tuple[float, float, int]],
              over: float = 0.010, least: float = 0.001) -> dict:
    """For every callback more than `over` late: which events (of at least `least` seconds, or
    any background job) overlapped its stall, [fired - lateness, fired], and where the loop's
    thread spent at least half of it: running (RAN), runnable but without a CPU (NO_CPU), or
    else asleep (ASLEEP).

    A stall is the log's ("from_log") when the log's own work on the loop overlapped it, or when
    the loop was kept from running (NO_CPU or ASLEEP) while a rotation job ran: the job's thread
    holding the GIL, the gzip process or the job's kernel work having the core, or a write()
    waiting for the journal the job's fsync commits. A loop that ran its own code for most of a
    stall was handling messages, which a log that never rotates does as well.

    Returns the count of such stalls, per cause how many it overlapped, how many had none, how
    many were the log's and the longest of those, and per event name the count, longest and
    total duration over the whole window."""
    stalls = []
    for fired, late, waited, ran in timed:
        if late > over:
            # ran and waited cover the interval since the previous callback, the stall and a
            # little more; asleep is what is left of it
            state = RAN if ran >= late / 2 else NO_CPU if waited >= late / 2 else ASLEEP
            stalls.append((fired - late, fired, late, state))
    relevant = [(start, start + took, kind) for start, took, kind in events
                if took >= least or kind not in ON_LOOP_KINDS]
    by_cause: dict[str, int] = {}
    unexplained = from_log = 0
    longest_from_log = 0.0
    for lo, hi, late, state in stalls:
        kinds = {kind for start, end, kind in relevant if start < hi and end > lo}
        causes = {EVENT_NAMES.get(kind, str(kind)) for kind in kinds}
        causes.add(state)
        for cause in causes:
            by_cause[cause] = by_cause.get(cause, 0) + 1
        unexplained += len(causes) == 1  # only where the thread was: no event overlapped it
        if kinds & set(LOG_KINDS) or (ROTATION_JOB in kinds and state != RAN):
            from_log += 1
            longest_from_log = max(longest_from_log, late * 1000)
    seen: dict[str, dict] = {}
    for start, took, kind in events:
        entry = seen.setdefault(EVENT_NAMES.get(kind, str(kind)), {"count": 0, "max_ms": 0.0, "total_ms": 0.0})
        entry["count"] += 1
        entry["max_ms"] = max(entry["max_ms"], took * 1000)
        entry["total_ms"] += took * 1000
    return {"stalls": len(stalls), "by_cause": by_cause, "unexplained": unexplained,
            "from_log": from_log, "from_log_max_ms": longest_from_log, "events": seen}


def summary(lateness: list[float]) -> dict:
    """p50 / p99 / max of the lateness in ms, and how many callbacks were more than 10 ms late."""
    if not lateness:
        return {"samples": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "over_10ms": 0}
    ordered = sorted(lateness)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {"samples": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000,
            "over_10ms": sum(1 for x in ordered if x > 0.010)}


def main() -> None:
    out, module, *args = sys.argv[1:]
    run = asyncio.run

    events = Events(events_path(Path(out)))
    if module == "cli":
        events.instrument_log()  # securechat (the reference relay has no log to time)

    def run_with_probe(main_coro, **kwargs):
        async def probed():
            events.loop_thread = threading.get_ident()
            probe = LagProbe(asyncio.get_running_loop(), Path(out), events=events)
            try:
                return await main_coro
            finally:
                probe.flush()

        return run(probed(), **kwargs)

    # Both relays start their loop with asyncio.run (cli.py serve, reference_relay.py).
    asyncio.run = run_with_probe
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
