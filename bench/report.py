"""Markdown tables from run_all()'s results, with securechat's figures as ratios to the reference."""

from __future__ import annotations

import math
import statistics


def _f(value, digits=1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(ours, ref) -> float | None:
    if ours is None or ref is None or not ref or math.isnan(ours) or math.isnan(ref):
        return None
    return ours / ref


def _r(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def built_live(phase: dict | None) -> int:
    """Frames the generator had to build during a measured phase (its pool ran dry)."""
    return int((phase or {}).get("built_live") or 0)


def valid(phase: dict | None) -> bool:
    """A saturated phase measured the relay only if every frame it sent was prebuilt: a frame
    built live holds the generator (~0.4 ms at N = 10, ~50 ms at N = 250) while it reads
    nothing, so msgs/s and latency then measure the generator."""
    return built_live(phase) == 0


def _validity(phase: dict) -> str:
    live = built_live(phase)
    return "valid" if live == 0 else f"**not valid**: {live:,} built live"


def ratios(results: dict) -> list[dict]:
    by = {(r["relay"], r["n"]): r for r in results["runs"]}
    rows = []
    for (kind, n), ours in sorted(by.items(), key=lambda kv: kv[0][1]):
        ref = by.get(("reference", n))
        if kind != "securechat" or ref is None:
            continue
        # Each repeat ran the two relays back to back: those pairs show how much the machine
        # moved under the median.
        pairs = [_ratio(a["server_cpu_ms_per_msg"], b["server_cpu_ms_per_msg"])
                 for a, b in zip(ours.get("closed_repeats", []), ref.get("closed_repeats", []))]
        pairs = [p for p in pairs if p is not None]
        rows.append({
            "n": n,
            "cpu": _ratio(ours["closed"]["server_cpu_ms_per_msg"], ref["closed"]["server_cpu_ms_per_msg"]),
            "cpu_range": (min(pairs), max(pairs)) if len(pairs) > 1 else None,
            "throughput": _ratio(ours["closed"]["messages_per_s"], ref["closed"]["messages_per_s"]),
            "egress": _ratio(ours["closed"]["egress_bytes_per_msg"], ref["closed"]["egress_bytes_per_msg"]),
            "p99": _ratio(ours["open"]["p99_ms"], ref["open"]["p99_ms"]),
            "p50": _ratio(ours["open"]["p50_ms"], ref["open"]["p50_ms"]),
            # closed loop: every sender's window full, so the relay's queue shows in the latency;
            # only when neither phase ran out of prebuilt frames
            "saturated_p99": _ratio(ours["closed"].get("p99_ms"), ref["closed"].get("p99_ms"))
            if valid(ours["closed"]) and valid(ref["closed"]) else None,
            "saturated_valid": valid(ours["closed"]) and valid(ref["closed"]),
        })
    return rows


def markdown(results: dict) -> str:
    if results.get("transports") is not None and not results.get("runs"):
        s = results["settings"]
        return (f"Generator: {results['generator']}; servers: {results.get('relays', 'not recorded')}; {s['senders']} senders "
                f"(fewer if N is smaller); {s['text_bytes']}-character messages.\n\n" + transports_markdown(results))
    s = results["settings"]
    out = []
    reference_gc = s.get("reference_gc")
    gc_note = (f"the reference relay runs with securechat's gc thresholds {tuple(reference_gc)}"
               if reference_gc else "the reference relay runs with Python's default gc thresholds")
    out.append(f"Generator: {results['generator']}; relays: {results.get('relays', 'not recorded')}; "
               f"{s['senders']} senders (fewer if N is smaller); {s['text_bytes']}-character messages; "
               f"{gc_note}.\n")
    if results["runs"]:  # none with --sizes 0
        out.append(f"### Throughput (closed loop, {s['window']} in flight per sender, {s['closed_seconds']} s) "
                   f"and latency (open loop, {s['rate']:g} msg/s offered, {s['open_seconds']} s)\n")
        out.append("| relay | N | msgs/s | deliveries/s | server CPU ms/msg | CPU µs/delivery | egress B/msg "
                   "| p50 ms | p99 ms | closed-loop p99 ms | RSS MB (joined) | RSS MB (end) "
                   "| generator CPU | frames built live (closed loop) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in sorted(results["runs"], key=lambda r: (r["n"], r["relay"] != "securechat")):
            c, o = r["closed"], r["open"]
            out.append(
                f"| {r['relay']} | {r['n']} | {_f(c['messages_per_s'], 0)} | {_f(c['deliveries_per_s'], 0)} "
                f"| {_f(c['server_cpu_ms_per_msg'], 3)} | {_f(c['server_cpu_ms_per_msg'] * 1000 / r['n'], 1)} "
                f"| {_f(c['egress_bytes_per_msg'], 0)} | {_f(o['p50_ms'], 2)} | {_f(o['p99_ms'], 2)} "
                f"| {_f(c.get('p99_ms'), 2)} | {_f(r['rss_joined_mb'], 1)} | {_f(c['rss_mb'], 1)} "
                f"| {_f(c.get('generator_cpu_util'), 2)} | {built_live(c):,} ({_validity(c)}) |"
            )
    rows = ratios(results)
    if rows:
        out.append("\n### securechat ÷ reference relay\n")
        target = "≤ 1.25× like for like" if reference_gc else "≤ 1.15×"
        out.append(f"| N | CPU/msg (target {target} at 50, 250; ≤ 1.5× at 10) | msgs/s | egress/msg | p50 | p99 "
                   "| closed-loop p99 (≤ 1.5×) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            spread = f" ({row['cpu_range'][0]:.2f}–{row['cpu_range'][1]:.2f} by pair)" if row["cpu_range"] else ""
            saturated = _r(row["saturated_p99"]) if row["saturated_valid"] else "not valid (frames built live)"
            out.append(f"| {row['n']} | {_r(row['cpu'])}{spread} | {_r(row['throughput'])} | {_r(row['egress'])} "
                       f"| {_r(row['p50'])} | {_r(row['p99'])} | {saturated} |")
    if results.get("slow"):
        out.append("\n### Slow consumer (open loop, one non-sending client stops reading)\n")
        out.append("| relay | N | offered msg/s | p50 / p99 ms, all reading | p50 / p99 ms, one stalled "
                   "| p99 ratio (≤ 1.2×) | RSS growth MB while stalled | stalled client closed with |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in results["slow"]:
            b, st = r["baseline"], r["stalled"]
            out.append(
                f"| {r['relay']} | {r['n']} | {r['offered_per_s']:g} | {_f(b['p50_ms'], 2)} / {_f(b['p99_ms'], 2)} "
                f"| {_f(st['p50_ms'], 2)} / {_f(st['p99_ms'], 2)} | {_r(_ratio(st['p99_ms'], b['p99_ms']))} "
                f"| {_f(st['rss_growth_mb'], 1)} | {st['stalled_closed_with'] or 'not closed'} |"
            )
    if results.get("idle"):
        out.append("\n### Idle connections (WebSocket open, no join)\n")
        out.append("| relay | connections | still open | RSS before MB | RSS with them MB | KiB per connection |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in results["idle"]:
            out.append(f"| {r['relay']} | {r['connections']:,} | {r['open']:,} | {_f(r['rss_base_mb'])} "
                       f"| {_f(r['rss_mb'])} | {_f(r['kib_per_connection'])} |")
        by_count = idle_ratios(results["idle"])
        if by_count:
            out.append("\n| connections | securechat ÷ reference, KiB per connection (medians; ≤ 1.2×) |")
            out.append("|---:|---:|")
            out.extend(f"| {count:,} | {_r(ratio)} |" for count, ratio in by_count.items())
    if results.get("rotation"):
        out.append(rotation_markdown(results))
    if results.get("rotation_open"):
        out.append(rotation_open_markdown(results))
    if results.get("storm"):
        out.append(storm_markdown(results))
    if results.get("transports"):
        out.append(transports_markdown(results))
    errors = {f"{r['relay']} N={r['n']}": r["errors"] for r in results["runs"] if r.get("errors")}
    if errors:
        out.append(f"\nError frames seen: {errors}")
    return "\n".join(out) + "\n"


def idle_ratios(idle: list[dict]) -> dict[int, float]:
    """Per connection count: the median KiB per connection of securechat over the reference's."""
    out = {}
    for count in sorted({r["connections"] for r in idle}):
        per = {kind: statistics.median(r["kib_per_connection"] for r in idle
                                       if r["connections"] == count and r["relay"] == kind)
               for kind in ("securechat", "reference")
               if any(r["connections"] == count and r["relay"] == kind for r in idle)}
        if len(per) == 2:
            out[count] = _ratio(per["securechat"], per["reference"])
    return out


def transports_markdown(results: dict) -> str:
    from .transports import ratios as transport_ratios

    s = results["settings"]
    runs = results["transports"]
    out = [f"### securechat over WebSocket and over the HTTP fallback (closed loop, {s['window']} in flight "
           f"per sender, {s['closed_seconds']} s; open loop {s['rate']:g} msg/s)\n",
           "| transport | N | msgs/s | deliveries/s | server CPU µs/delivery | egress B/msg | p50 ms | p99 ms "
           "| RSS MB (joined) | RSS MB (end) | HTTP errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r["n"], r["transport"] != "websocket")):
        c, o = r["closed"], r["open"]
        out.append(
            f"| {r['transport']} | {r['n']} | {_f(c['messages_per_s'], 0)} | {_f(c['deliveries_per_s'], 0)} "
            f"| {_f(c['server_cpu_us_per_delivery'], 1)} | {_f(c['egress_bytes_per_msg'], 0)} "
            f"| {_f(o['p50_ms'], 2)} | {_f(o['p99_ms'], 2)} | {_f(r['rss_joined_mb'], 1)} | {_f(c['rss_mb'], 1)} "
            f"| {r.get('http_errors') or '–'} |")
        if c.get("clients_closed"):
            out.append(f"| ⚠ {r['transport']} N={r['n']}: {c['clients_closed']:g} clients were closed during the run "
                       "(the generator fell behind): its figures are not comparable | | | | | | | | | | |")
    out.append("\n### HTTP fallback ÷ WebSocket\n")
    out.append("| N | server CPU per delivered frame | deliveries/s | egress/msg | p50 | p99 |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for row in transport_ratios(runs):
        spread = f" ({row['cpu_range'][0]:.2f}–{row['cpu_range'][1]:.2f} by pair)" if row["cpu_range"] else ""
        out.append(f"| {row['n']} | {_r(row['cpu'])}{spread} | {_r(row['throughput'])} | {_r(row['egress'])} "
                   f"| {_r(row['p50'])} | {_r(row['p99'])} |")
    return "\n".join(out) + "\n"


def rotation_markdown(results: dict) -> str:
    s = results["settings"]
    size = f"{s['rotation_log_bytes']:,} bytes" if s.get("rotation_log_bytes") else "its default size"
    rows = results["rotation"]
    out = [f"\n### Rotation during saturation (closed loop, {s['rotation_window']} in flight per sender, "
           f"{s['rotation_seconds']:g} s × {s['repeats']}; the log rotating at {size}; lag probe in both relays)\n",
           "| relay | N | msgs/s | server CPU ms/msg | p50 ms | p99 ms (range) | loop lag p99 ms | loop lag max ms "
           "| callbacks > 10 ms late | rotations | frames built live | callbacks > 10 ms late, by what overlapped them |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["relay"] != "securechat")):
        lo, hi = r["p99_ms_range"]
        out.append(f"| {r['relay']} | {r['n']} | {_f(r['messages_per_s'], 0)} | {_f(r['server_cpu_ms_per_msg'], 3)} "
                   f"| {_f(r['p50_ms'], 2)} | {_f(r['p99_ms'], 2)} ({_f(lo, 1)}–{_f(hi, 1)}) "
                   f"| {_f(r['lag_p99_ms'], 2)} | {_f(r['lag_max_ms'], 1)} | {r['lag_over_10ms']:,} of "
                   f"{r['lag_samples']:,} | {r['rotations'] if r['relay'] == 'securechat' else '–'} "
                   f"| {built_live(r):,} ({_validity(r)}) | {stalls_text(r.get('stalls'))} |")
    by = {(r["relay"], r["n"]): r for r in rows}
    pairs = [(n, by[("securechat", n)], by[("reference", n)]) for (kind, n) in sorted(by, key=lambda k: k[1])
             if kind == "securechat" and ("reference", n) in by]
    if pairs:
        out.append("\n| N | CPU/msg | msgs/s | saturated p99 (≤ 1.5×) |")
        out.append("|---:|---:|---:|---:|")
        for n, ours, ref in pairs:
            saturated = _r(_ratio(ours['p99_ms'], ref['p99_ms'])) if valid(ours) and valid(ref) \
                else "not valid (frames built live)"
            out.append(f"| {n} | {_r(_ratio(ours['server_cpu_ms_per_msg'], ref['server_cpu_ms_per_msg']))} "
                       f"| {_r(_ratio(ours['messages_per_s'], ref['messages_per_s']))} "
                       f"| {saturated} |")
    return "\n".join(out) + "\n"


def stalls_text(stalls: dict | None) -> str:
    """'3: 2 gc gen 2, 1 no CPU ...' for the callbacks more than 10 ms late, by what overlapped them
    and where the loop's thread was (bench/probe.py attribute(): each stall counts once for each)."""
    if not stalls:
        return "–"
    parts = [f"{count} {cause}" for cause, count in sorted(stalls["by_cause"].items(), key=lambda kv: -kv[1])]
    return f"{stalls['stalls']}" + (f": {', '.join(parts)}" if parts else "")


def from_log_text(stalls: dict | None) -> str:
    """'2 (max 14.1 ms)': the late callbacks that were the log's (rotation, gzip, fsync, appends)."""
    if not stalls or "from_log" not in stalls:
        return "–"
    if not stalls["from_log"]:
        return "0"
    return f"{stalls['from_log']} (max {stalls['from_log_max_ms']:.1f} ms)"


def _event_max(stalls: dict | None, name: str) -> str:
    e = (stalls or {}).get("events", {}).get(name)
    return f"{e['max_ms']:.1f} ({e['count']:,})" if e else "–"


def rotation_open_markdown(results: dict) -> str:
    s = results["settings"]
    size = f"{s['rotation_log_bytes']:,} bytes" if s.get("rotation_log_bytes") else "its default size"
    rows = results["rotation_open"]
    out = [f"\n### Rotation at a fixed offered rate (open loop at {s.get('rotation_open_share', 0.3):g} of the "
           f"rotating relay's saturated msgs/s, {s['rotation_seconds']:g} s × {s['repeats']}; securechat with the log "
           f"rotating at {size}, and not rotating)\n",
           "| rotation | N | offered msg/s | p50 ms | p99 ms (range) | max ms | loop lag p99 ms | loop lag max ms "
           "| callbacks > 10 ms late, by what overlapped them | of them the log's | rotations "
           "| rotation on the loop, max ms (count) | gc gen 2 max ms (count) | fsync on the loop, max ms (count) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["rotation"] != "on")):
        lo, hi = r["p99_ms_range"]
        st = r.get("stalls")
        out.append(f"| {r['rotation']} | {r['n']} | {_f(r['offered_per_s'], 0)} | {_f(r['p50_ms'], 2)} "
                   f"| {_f(r['p99_ms'], 2)} ({_f(lo, 1)}–{_f(hi, 1)}) | {_f(r['max_ms'], 1)} "
                   f"| {_f(r['lag_p99_ms'], 2)} | {_f(r['lag_max_ms'], 1)} | {stalls_text(st)} | {from_log_text(st)} | {r['rotations']} "
                   f"| {_event_max(st, 'rotation on the loop')} | {_event_max(st, 'gc gen 2')} "
                   f"| {_event_max(st, 'fsync on the loop')} |")
        if r.get("late_sends") or r.get("missing_deliveries") or r.get("built_live"):
            out.append(f"| ⚠ N={r['n']} rotation {r['rotation']}: {r.get('late_sends', 0):,} sends more than 5 ms "
                       f"late, {r.get('missing_deliveries', 0):,} deliveries missing, {r.get('built_live', 0):,} "
                       "frames built live | | | | | | | | | | | | | |")
    return "\n".join(out) + "\n"


def _rooms_text(r: dict) -> str:
    sizes = r.get("rooms") or [r["participants"]]
    if len(sizes) == 1:
        return "1 room"
    if len(set(sizes)) == 1:
        return f"{len(sizes)} rooms of {sizes[0]:,}"
    return f"{len(sizes)} rooms of {'/'.join(f'{n:,}' for n in sizes)}"


def _refusals_text(r: dict) -> str:
    errors = r.get("errors") or {}
    return ", ".join(f"{code} {count:,}" for code, count in sorted(errors.items())) or "0"


def storm_growth(rows: list[dict]) -> list[float]:
    """securechat's RSS growth after the storm ÷ after the paced join, one per repeat."""
    by = {(r["relay"], r["mode"], r.get("repeat", 0)): r for r in rows}
    growth = lambda r: r["rss_after_mb"] - r["rss_before_mb"]  # noqa: E731
    out = []
    for (relay, mode, repeat), storm in sorted(by.items()):
        paced = by.get((relay, "paced", repeat))
        if relay == "securechat" and mode == "storm" and paced:
            ratio = _ratio(growth(storm), growth(paced))
            if ratio is not None:
                out.append(ratio)
    return out


def storm_markdown(results: dict) -> str:
    rows = results["storm"]
    out = ["\n### Reconnect storm (every client joins at once) against a paced join (one at a time)\n",
           "Complete: every client knows every member of its own room. A refused join or a connection "
           "that never opened makes the run not complete (the time column then says so).\n",
           "| relay | joins | rooms | all connected s | every roster complete s | server CPU s "
           "| RSS before / peak / after MB | KiB per participant | loop lag p99 / max ms | closed 4002 "
           "| connect failures | joins refused (by code) | roster MB received |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in sorted(rows, key=lambda r: (r["relay"] != "securechat", r.get("repeat", 0), r["mode"] != "paced")):
        if r["complete_s"] is not None:
            complete = _f(r["complete_s"], 2)
        elif r.get("refused"):
            complete = f"**not complete**: {r['refused']:,} of {r['participants']:,} refused or never connected"
        elif r.get("wrong_rosters"):
            complete = f"**not complete**: {r['wrong_rosters']:,} rosters are not their room's"
        else:
            complete = f"**not by the deadline** ({r['complete_clients']:,} of {r['participants']:,})"
        if r["relay"] != "securechat":
            complete += " (welcomes only)"
        lag = r.get("lag") or {}
        out.append(f"| {r['relay']} | {r['mode']} {r['participants']:,} | {_rooms_text(r)} "
                   f"| {_f(r['connected_s'], 2)} | {complete} "
                   f"| {_f(r['server_cpu_s'], 2)} | {_f(r['rss_before_mb'])} / {_f(r['rss_peak_mb'])} / "
                   f"{_f(r['rss_after_mb'])} | {_f(r['kib_per_participant'])} "
                   f"| {_f(lag.get('p99_ms'), 1)} / {_f(lag.get('max_ms'), 1)} | {r['dropped_4002']} "
                   f"| {r.get('connect_failed', 0):,} | {_refusals_text(r)} | {_f(r['roster_mb'])} |")
    ratios = storm_growth(rows)
    if ratios:
        shown = ", ".join(_r(x) for x in ratios)
        out.append(f"\nsecurechat: RSS growth after the storm ÷ after the paced join: {shown}"
                   + (f" (median {_r(statistics.median(ratios))})" if len(ratios) > 1 else "")
                   + " (target ≤ 1.20×).")
    if any(r["relay"] != "securechat" for r in rows):
        out.append("The reference relay has no rooms and sends no roster: it answers every join with a "
                   "welcome naming only the joiner, so its rows time the connections and joins alone "
                   "(all its clients are in one routing table whatever room they asked for).")
    return "\n".join(out) + "\n"

