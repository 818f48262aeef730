"""The HTTP fallback against the WebSocket: server CPU per delivered frame, in one invocation.

For each room size N two `securechat serve` processes run side by side, one whose N clients all
use the WebSocket and one whose N clients all use the HTTP transport (PROTOCOL.md §1.2:
an SSE stream down, POSTs up, with the acknowledgements a browser sends). They are measured in
alternation (A B A B ...) with the same closed loop as the main benchmark, so both see the same
machine; the figure that matters is their ratio, server CPU per delivered frame, HTTP ÷ WS.
"""

from __future__ import annotations

from pathlib import Path

from . import keys as bench_keys
from .runner import Room, Settings, _median_run, close_all, closed_loop, open_loop, start_relay

TRANSPORTS = ("websocket", "http")


async def run_transport_size(n: int, s: Settings, workdir: Path) -> list[dict]:
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    relays, rooms = {}, {}
    try:
        for transport in TRANSPORTS:
            relays[transport] = start_relay("securechat", workdir)
            rooms[transport] = Room(relays[transport], members, senders, s.text_bytes, transport=transport)
            await rooms[transport].join_all()
        results = {t: {"transport": t, "n": n, "senders": senders, "pinned": relays[t].pinned,
                       "rss_joined_mb": relays[t].rss_bytes() / 2**20} for t in TRANSPORTS}
        opens: dict[str, list] = {t: [] for t in TRANSPORTS}
        closeds: dict[str, list] = {t: [] for t in TRANSPORTS}
        expect = int(s.expected_msg_rate / n * (s.closed_seconds + s.warmup + 1) / senders) + s.window
        for _ in range(s.repeats):
            for t in TRANSPORTS:
                opens[t].append(await open_loop(rooms[t], s.rate, s.open_seconds, s.warmup))
        for _ in range(s.repeats):
            for t in TRANSPORTS:
                for factory in rooms[t].factories:
                    factory.pool.clear()
                    await factory.prebuild_async(min(expect, 4000))
                closeds[t].append(await closed_loop(rooms[t], s.closed_seconds, s.warmup, s.window))
                for factory in rooms[t].factories:
                    factory.pool.clear()
        for t in TRANSPORTS:
            results[t]["open"] = _median_run(opens[t])
            results[t]["closed"] = _median_run(closeds[t])
            results[t]["closed_repeats"] = closeds[t]
            results[t]["errors"] = dict(rooms[t].errors)
            http_errors = {}
            for client in rooms[t].clients:
                for status, count in getattr(client, "errors", {}).items():
                    http_errors[status] = http_errors.get(status, 0) + count
            results[t]["http_errors"] = http_errors
        return [results[t] for t in TRANSPORTS]
    finally:
        await close_all(rooms, relays)


def ratios(runs: list[dict]) -> list[dict]:
    by = {(r["transport"], r["n"]): r for r in runs}
    rows = []
    for n in sorted({r["n"] for r in runs}):
        ws, http = by.get(("websocket", n)), by.get(("http", n))
        if ws is None or http is None:
            continue
        pairs = [h["server_cpu_us_per_delivery"] / w["server_cpu_us_per_delivery"]
                 for w, h in zip(ws["closed_repeats"], http["closed_repeats"]) if w["server_cpu_us_per_delivery"]]
        rows.append({
            "n": n,
            "ws_us": ws["closed"]["server_cpu_us_per_delivery"],
            "http_us": http["closed"]["server_cpu_us_per_delivery"],
            "cpu": http["closed"]["server_cpu_us_per_delivery"] / ws["closed"]["server_cpu_us_per_delivery"]
            if ws["closed"]["server_cpu_us_per_delivery"] else None,
            "cpu_range": (min(pairs), max(pairs)) if len(pairs) > 1 else None,
            "throughput": http["closed"]["deliveries_per_s"] / ws["closed"]["deliveries_per_s"]
            if ws["closed"]["deliveries_per_s"] else None,
            "egress": http["closed"]["egress_bytes_per_msg"] / ws["closed"]["egress_bytes_per_msg"]
            if ws["closed"]["egress_bytes_per_msg"] else None,
            "p50": http["open"]["p50_ms"] / ws["open"]["p50_ms"] if ws["open"]["p50_ms"] else None,
            "p99": http["open"]["p99_ms"] / ws["open"]["p99_ms"] if ws["open"]["p99_ms"] else None,
        })
    return rows
