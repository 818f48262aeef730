"""A low-priority thread holding the GIL: how late the event loop's callbacks come.

`python -m bench.gil_inversion [--seconds 6]` runs, on one core (the first this process may
use), an asyncio loop ticking every 2 ms and 40 % busy, beside a thread that takes the GIL either
in bursts (3 ms of Python every 20 ms, like a rotation job) or continuously (like a retention
scan), at nice 19 and at nice 0, each without and with a nice-0 CPU hog on the same core (another
worker, any busy neighbour). It prints the loop's lag p99 / max and the callbacks > 10 ms late.
Why storage/background.py runs its thread at the server's priority (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_CHILD = r"""
import asyncio, json, os, sys, threading, time
nice, seconds, bursty = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "bursty"
stop = False
def maintenance():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    data = json.dumps({"k": list(range(50))})
    while not stop:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.003:
            json.loads(data)
        if bursty:
            time.sleep(0.02)
async def main():
    lags, end = [], time.monotonic() + seconds
    due = time.monotonic()
    while time.monotonic() < end:
        due += 0.002
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lags.append((time.monotonic() - due) * 1000)
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0008:
            pass
        due = max(due, time.monotonic() - 0.002)
    return lags
threading.Thread(target=maintenance, daemon=True).start()
lags = sorted(asyncio.run(main()))
stop = True
print(len(lags), lags[int(len(lags) * 0.99)], lags[-1], sum(lag > 10 for lag in lags))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each case (default 6)")
    args = parser.parse_args()
    core = str(min(os.sched_getaffinity(0)))
    print(f"core {core}, {args.seconds:g} s a case\n")
    print("| neighbour | thread | nice | callbacks | lag p99 ms | lag max ms | > 10 ms late |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for hog in (False, True):
        neighbour = subprocess.Popen(["taskset", "-c", core, sys.executable, "-c", "while True: pass"]) \
            if hog else None
        try:
            for mode in ("bursty", "continuous"):
                for nice in (19, 0):
                    out = subprocess.run(["taskset", "-c", core, sys.executable, "-c", _CHILD, str(nice),
                                          str(args.seconds), mode], capture_output=True, text=True, check=True)
                    count, p99, worst, late = out.stdout.split()
                    print(f"| {'nice-0 CPU hog' if hog else 'none'} | {mode} | {nice} | {count} | "
                          f"{float(p99):.2f} | {float(worst):.2f} | {late} |")
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()


if __name__ == "__main__":
    main()
