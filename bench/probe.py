"""An event-loop lag probe inside a relay process: python -m bench.probe OUT MODULE [ARGS...].

Runs MODULE as __main__ (`cli serve ...` for the real `securechat serve`, or
`bench.reference_relay ...`) with one addition: as soon as the process's asyncio loop runs, a
callback is scheduled every INTERVAL on that loop, and how late each one fires is recorded. A
callback can only be late because something else held the loop (a rotation's fsync, a long
fan-out, a garbage collection) or the process had no CPU; that lateness is the stall every
message arriving meanwhile waited for too.

Samples go to OUT as packed (time.monotonic() seconds, lateness seconds) doubles, appended a
few times a second, so the benchmark can cut out the samples of one phase by time (the clock is
the system-wide CLOCK_MONOTONIC, the same in every process). Costs one tiny callback per
interval (2 ms: ~0.3 % of a core), which is why the CPU comparison runs without it.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import struct
import sys
import time
from array import array
from pathlib import Path

INTERVAL = float(os.environ.get("BENCH_PROBE_INTERVAL", "0.002"))
FLUSH_EVERY = 0.1  # seconds between appends to the file (read samples this much later)
SAMPLE = struct.Struct("=dd")


class LagProbe:
    def __init__(self, loop: asyncio.AbstractEventLoop, out: Path, interval: float = INTERVAL):
        self.loop = loop
        self.out = open(out, "ab", buffering=0)
        self.interval = interval
        self.samples = array("d")
        self.next_flush = time.monotonic() + FLUSH_EVERY
        self.due = loop.time() + interval
        loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        now = self.loop.time()  # the loop's clock is time.monotonic()
        self.samples.append(now)
        self.samples.append(now - self.due)
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


def read_samples(path: Path, since: float | None = None, until: float | None = None) -> list[float]:
    """Lateness in seconds of every probe callback that fired within [since, until]."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    data = data[: len(data) - len(data) % SAMPLE.size]
    values = array("d")
    values.frombytes(data)
    return [values[i + 1] for i in range(0, len(values), 2)
            if (since is None or values[i] >= since) and (until is None or values[i] <= until)]


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

    def run_with_probe(main_coro, **kwargs):
        async def probed():
            probe = LagProbe(asyncio.get_running_loop(), Path(out))
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
