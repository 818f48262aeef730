"""python -m bench: the securechat fan-out benchmark (see docs/PERFORMANCE.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from . import report
from .runner import Settings, run_all


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Fan-out benchmark: securechat vs a bare Tornado reference relay, on 127.0.0.1.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (< 30 s on 2 quiet cores): N=10,50, 0.75 s phases, slow consumer at N=20, 200 idle")
    parser.add_argument("--sizes", type=_ints, help="room sizes N, e.g. 10,50,100,250 (0 skips the fan-out comparison)")
    parser.add_argument("--senders", type=int, help="senders per room (default 10)")
    parser.add_argument("--rate", type=float, help="open-loop offered messages/s (default 20)")
    parser.add_argument("--seconds", type=float, help="length of each measured phase")
    parser.add_argument("--idle", type=_ints, help="idle connection counts (default 1000,5000; 0 skips)")
    parser.add_argument("--slow-size", type=int, help="N for the slow-consumer test (0 skips)")
    parser.add_argument("--slow-rate", type=float, help="offered msg/s in the slow-consumer test")
    parser.add_argument("--window", type=int, help="closed loop: messages in flight per sender (default 2)")
    parser.add_argument("--repeats", type=int, help="alternating repeats per N (default 3; medians reported)")
    parser.add_argument("--reference-gc", choices=["default", "securechat"], default="default",
                        help="the reference relay's garbage-collector thresholds: Python's default "
                        "(a bare Tornado app) or securechat's tuned ones (like for like)")
    parser.add_argument("--only", choices=["securechat", "reference"], help="run one relay only")
    parser.add_argument("--transports", action="store_true",
                        help="compare securechat's HTTP fallback transport with its WebSocket instead "
                        "(server CPU per delivered frame, both in this invocation)")
    parser.add_argument("--scenario", metavar="NAMES",
                        help="run only these scenarios (comma-separated: rotation, rotation-open, storm), not the fan-out "
                        "comparison, the slow consumer or the idle test")
    parser.add_argument("--no-scenarios", action="store_true", help="skip the rotation and storm scenarios")
    parser.add_argument("--rotation-log-bytes", type=int,
                        help="the rotation scenarios' log size (default: the shipped log.max_bytes, 10 MiB)")
    parser.add_argument("--rotation-share", type=float,
                        help="rotation-open: offered rate as a share of the saturated rate (default 0.3)")
    parser.add_argument("--rotation-sizes", type=_ints, help="room sizes of the rotation scenario (default 10,100)")
    parser.add_argument("--rotation-seconds", type=float, help="length of each rotation phase (default 10)")
    parser.add_argument("--storm-size", type=int, help="participants in the reconnect storm (default 256, a full room)")
    parser.add_argument("--storm-rooms", type=int,
                        help="rooms the storm's participants are spread over, sizes as even as possible "
                        "(default: as many as --storm-size needs at 256 a room, so 1000 means 4 rooms of 250)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = parser.parse_args(argv)

    s = Settings()
    if args.quick:
        # A smoke run (< 30 s on 2 quiet cores): every phase runs, briefly; the full run measures.
        s = Settings(sizes=(10, 50), open_seconds=0.75, closed_seconds=0.75, warmup=0.2, idle=(200,),
                     slow_size=20, slow_seconds=0.75, slow_rate=50.0, expected_msg_rate=20000, repeats=1,
                     settle=0.2, rotation_sizes=(10,), rotation_seconds=1.0,
                     rotation_log_bytes=256 * 1024, storm_size=100, storm_settle=0.5)
    if args.sizes is not None:
        s.sizes = tuple(n for n in args.sizes if n > 0)
    if args.senders:
        s.senders = args.senders
    if args.rate:
        s.rate = args.rate
    if args.seconds:
        s.open_seconds = s.closed_seconds = s.slow_seconds = args.seconds
    if args.idle is not None:
        s.idle = tuple(i for i in args.idle if i > 0)
    if args.slow_size is not None:
        s.slow_size = args.slow_size
    if args.slow_rate:
        s.slow_rate = args.slow_rate
    if args.window:
        s.window = args.window
    if args.repeats:
        s.repeats = args.repeats
    if args.reference_gc == "securechat":
        from securechat.server import GC_THRESHOLDS

        s.reference_gc = GC_THRESHOLDS
    if args.only:
        s.relays = (args.only,)
    if args.transports:
        s.transports = True
    if args.rotation_sizes:
        s.rotation_sizes = args.rotation_sizes
    if args.rotation_seconds:
        s.rotation_seconds = args.rotation_seconds
    if args.rotation_log_bytes:
        s.rotation_log_bytes = args.rotation_log_bytes
    if args.rotation_share:
        s.rotation_open_share = args.rotation_share
    if args.storm_size is not None:
        s.storm_size = args.storm_size
    if args.storm_rooms is not None:
        if args.storm_rooms < 1:
            parser.error("--storm-rooms must be at least 1")
        s.storm_rooms = args.storm_rooms
    if args.no_scenarios:
        s.scenarios = ()
    if args.scenario:
        s.scenarios = tuple(x.strip() for x in args.scenario.split(",") if x.strip())
        unknown = set(s.scenarios) - {"rotation", "rotation-open", "storm"}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        s.sizes, s.slow_size, s.idle = (), 0, ()
    started = time.monotonic()
    results = asyncio.run(run_all(s))
    results["wall_seconds"] = time.monotonic() - started
    results["command"] = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(report.markdown(results))
    print(f"(wall time {results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
