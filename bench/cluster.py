"""python -m bench.cluster: securechat as 2 workers joined by Redis against one process.

On a 2-core machine throughput cannot show scaling, so this reports what predicts it: the CPU
one fanned-out message costs, summed over every process that handles it (all workers plus
redis-server), against one `securechat serve` in the same run, plus the latency the cluster
adds per message at a fixed offered rate. Both servers are pinned to the same core (taskset),
the generator to the other, and measured in alternation (A B A B), medians over repeats.

  python -m bench.cluster                 # N = 10, 50 and 250, 2 workers
  python -m bench.cluster --quick         # N = 10 and 50, short phases (a smoke run)
  python -m bench.cluster --sizes 50 --workers 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import keys as bench_keys
from .runner import (BENCH_ENV, CLK_TCK, HOST, NOFILE, PAGE, REPO, FrameBuilder, Relay, Room, Settings, _median_run,
                     close_all, closed_loop, free_port, log, open_loop, pin_generator, raise_nofile, relay_pinning,
                     saturated_phase, start_relay)


class ClusterRelay(Relay):
    """`securechat serve --workers N` with its own redis-server, as one relay: CPU and RSS are
    summed over the workers (the parent only waits) and redis-server."""

    def __init__(self, proc, port, data_dir, pinned, redis):
        super().__init__("cluster", proc, port, data_dir, pinned)
        self.redis = redis
        self.readings: list[dict[int, float]] = []  # pid -> CPU seconds, at each cpu_seconds()

    def members(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children] + [self.redis.pid]

    def cpu_seconds(self) -> float:
        reading = {}
        for pid in self.members():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime + stime + cutime + cstime, as Relay.cpu_seconds counts the one process: a
            # worker's waited-for children are the gzip of its rotated log segments.
            reading[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
        self.readings = [*self.readings[-1:], reading]
        return sum(reading.values())

    def redis_share(self) -> float:
        """redis-server's part of the CPU between the last two cpu_seconds() readings (a closed
        loop reads exactly twice: its window's start and end)."""
        before, after = self.readings
        total = sum(after[pid] - before.get(pid, 0.0) for pid in after)
        redis = after[self.redis.pid] - before[self.redis.pid]
        return redis / total if total > 0 else float("nan")

    def rss_bytes(self) -> int:
        return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE for pid in self.members())

    def stop(self) -> None:
        super().stop()
        if self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)


def start_cluster(workdir: Path, workers: int, env_extra: dict[str, str]) -> ClusterRelay:
    redis_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
    sock = redis_dir / "redis.sock"
    taskset, pinned = relay_pinning()
    redis = subprocess.Popen([*taskset, "redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                              "--appendonly", "no", "--dir", str(redis_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    port = free_port()
    env = dict(os.environ, **BENCH_ENV, **env_extra, SECURECHAT_CLUSTER_REDIS_URL=f"unix://{sock}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    argv = [*taskset, sys.executable, "-m", "cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
            "--workers", str(workers)]
    proc = subprocess.Popen(argv, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: raise_nofile(NOFILE))
    relay = ClusterRelay(proc, port, data_dir, pinned, redis)
    deadline = time.monotonic() + 30
    healthy = 0
    while time.monotonic() < deadline and healthy < 3 * workers:
        if proc.poll() is not None:
            raise RuntimeError(f"cluster exited at start-up: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1) as reply:
                healthy += json.loads(reply.read()).get("cluster", {}).get("workers") == workers
        except OSError:
            pass
        time.sleep(0.05)
    if healthy < 3 * workers:
        relay.stop()
        raise RuntimeError("the cluster did not come up with every worker connected to Redis")
    return relay


async def paced_cpu(room: Room, relay: Relay, rate: float, seconds: float) -> dict:
    """CPU per message at a fixed offered rate. The closed loop runs each side at its own rate
    (the cluster's acks wait for Redis), and CPU per message falls with the rate (relay/ws.py
    coalesces a socket's frames per loop turn), so this compares both at the same load."""
    senders = len(room.factories)
    # Every frame built before the CPU window opens (open_loop would build what is missing
    # itself, inside it, while the server idles and its idle CPU counts against the messages).
    for factory in room.factories:
        factory.pool.clear()
        await factory.prebuild_async(int(rate * seconds) // senders + 2)
    before = relay.cpu_seconds()
    run = await open_loop(room, rate, seconds, 0.0)
    cpu = relay.cpu_seconds() - before
    return {"rate": rate, "messages": run["messages"], "cpu_ms_per_msg": cpu * 1000 / max(1, run["messages"]),
            "p50_ms": run["p50_ms"], "late_sends": run["late_sends"], "missing": run["missing_deliveries"]}


async def saturated(rooms: dict, n: int, s: Settings, window: int) -> dict:
    """Both sides saturated: `window` messages in flight per sender, on frames prebuilt in other
    processes (FrameBuilder) so the generator is never the limit; a repeat that had to build a
    frame live is run again with a larger pool. Scaling is about this case: with k free cores k
    workers at full load, where each wake-up carries many messages on both sides, instead of the
    one or two per wake-up of a light load, where a cluster's extra wake-ups per message (the
    PUBLISH, its reply, the other worker's read) weigh the most."""
    builder = FrameBuilder(s.build_workers)
    try:
        runs, _, _ = await saturated_phase(rooms, builder, s, n, window)
    finally:
        builder.close()
    ratios = [c["server_cpu_ms_per_msg"] / o["server_cpu_ms_per_msg"] for c, o in zip(runs["cluster"], runs["single"])]
    return {"window": window, "ratios": ratios, "ratio": statistics.median(ratios),
            "built_live": sum(r["built_live"] for kind in runs for r in runs[kind]),
            **{kind: _median_run(runs[kind]) for kind in runs}}


async def run_size(n: int, s: Settings, workers: int, workdir: Path, log_max_bytes: int | None,
                   saturated_window: int = 0) -> dict:
    members = bench_keys.members(n)
    senders = min(s.senders, n)
    env = {"SECURECHAT_LOG_MAX_BYTES": str(log_max_bytes)} if log_max_bytes else {}
    relays = {"single": start_relay("securechat", workdir, env_extra=env),
              "cluster": start_cluster(workdir, workers, env)}
    rooms = {}
    try:
        for kind, relay in relays.items():
            rooms[kind] = Room(relay, members, senders, s.text_bytes)
            await rooms[kind].join_all()
        opens = {kind: [] for kind in relays}
        closeds = {kind: [] for kind in relays}
        expect = int(s.expected_msg_rate / n * (s.closed_seconds + s.warmup + 1) / senders) + s.window
        for _ in range(s.repeats):
            for kind in relays:
                opens[kind].append(await open_loop(rooms[kind], s.rate, s.open_seconds, s.warmup))
        for _ in range(s.repeats):
            for kind in relays:
                for factory in rooms[kind].factories:
                    factory.pool.clear()
                    await factory.prebuild_async(min(expect, 4000))
                closeds[kind].append(await closed_loop(rooms[kind], s.closed_seconds, s.warmup, s.window))
                if kind == "cluster":
                    closeds[kind][-1]["redis_cpu_share"] = relays[kind].redis_share()
                if closeds[kind][-1]["messages_per_s"] == 0:
                    raise RuntimeError(f"N = {n}: the {kind} closed loop acknowledged no message "
                                       f"({closeds[kind][-1]['clients_closed']} clients closed, errors "
                                       f"{dict(rooms[kind].errors)})")
                for factory in rooms[kind].factories:
                    factory.pool.clear()
        # The same load for both: half the slower side's closed-loop rate.
        rate = 0.5 * min(statistics.median(c["messages_per_s"] for c in closeds[kind]) for kind in relays)
        paceds = {kind: [] for kind in relays}
        for _ in range(s.repeats):
            for kind in relays:
                paceds[kind].append(await paced_cpu(rooms[kind], relays[kind], rate, s.closed_seconds))
        out = {"n": n, "workers": workers, "senders": senders}
        out["paced"] = {kind: paceds[kind] for kind in relays}
        out["paced_rate"] = rate
        out["paced_ratios"] = [c["cpu_ms_per_msg"] / o["cpu_ms_per_msg"]
                               for c, o in zip(paceds["cluster"], paceds["single"])]
        out["paced_ratio"] = statistics.median(out["paced_ratios"])
        if saturated_window:
            out["saturated"] = await saturated(rooms, n, s, saturated_window)
        for kind in relays:
            out[kind] = {"open": _median_run(opens[kind]), "closed": _median_run(closeds[kind]),
                         "errors": dict(rooms[kind].errors)}
        single, cluster = out["single"], out["cluster"]
        out["cpu_ratio"] = cluster["closed"]["server_cpu_ms_per_msg"] / single["closed"]["server_cpu_ms_per_msg"]
        out["cpu_ratios"] = [c["server_cpu_ms_per_msg"] / o["server_cpu_ms_per_msg"]
                             for c, o in zip(closeds["cluster"], closeds["single"])]
        out["added_p50_ms"] = cluster["open"]["p50_ms"] - single["open"]["p50_ms"]
        out["added_p99_ms"] = cluster["open"]["p99_ms"] - single["open"]["p99_ms"]
        return out
    finally:
        await close_all(rooms, relays)


def report(result: dict) -> str:
    lines = ["| N | workers | msgs/s, one process / cluster | CPU ms/msg, one process | "
             "CPU ms/msg, workers + Redis | Redis's share | ratio (repeats) | "
             "p50 / p99 ms, one process | p50 / p99 ms, cluster | added p50 / p99 ms | "
             "same offered rate: msgs/s, CPU ms/msg one / cluster, ratio (repeats) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        single, cluster = run["single"], run["cluster"]
        ratios = ", ".join(f"{r:.2f}" for r in run["cpu_ratios"])
        lines.append(
            f"| {run['n']} | {run['workers']} | "
            f"{single['closed']['messages_per_s']:.0f} / {cluster['closed']['messages_per_s']:.0f} | "
            f"{single['closed']['server_cpu_ms_per_msg']:.3f} | "
            f"{cluster['closed']['server_cpu_ms_per_msg']:.3f} | {cluster['closed']['redis_cpu_share']:.0%} | "
            f"**{run['cpu_ratio']:.2f}** ({ratios}) | "
            f"{single['open']['p50_ms']:.2f} / {single['open']['p99_ms']:.2f} | "
            f"{cluster['open']['p50_ms']:.2f} / {cluster['open']['p99_ms']:.2f} | "
            f"{run['added_p50_ms']:+.2f} / {run['added_p99_ms']:+.2f} | "
            f"{run['paced_rate']:.0f}: {statistics.median(p['cpu_ms_per_msg'] for p in run['paced']['single']):.3f} / "
            f"{statistics.median(p['cpu_ms_per_msg'] for p in run['paced']['cluster']):.3f}, "
            f"**{run['paced_ratio']:.2f}** ({', '.join(f'{r:.2f}' for r in run['paced_ratios'])}) |")
    saturated_runs = [run for run in result["runs"] if run.get("saturated")]
    if saturated_runs:
        lines += ["", "| N | saturated: in flight per sender | msgs/s, one process / cluster | "
                      "CPU ms/msg, one process / workers + Redis | ratio (repeats) | frames built live |",
                  "|---|---|---|---|---|---|"]
        for run in saturated_runs:
            sat = run["saturated"]
            lines.append(
                f"| {run['n']} | {sat['window']} | {sat['single']['messages_per_s']:.0f} / "
                f"{sat['cluster']['messages_per_s']:.0f} | {sat['single']['server_cpu_ms_per_msg']:.3f} / "
                f"{sat['cluster']['server_cpu_ms_per_msg']:.3f} | **{sat['ratio']:.2f}** "
                f"({', '.join(f'{r:.2f}' for r in sat['ratios'])}) | "
                f"{sat['built_live']}{'' if sat['built_live'] == 0 else ' (not valid: the generator was the limit)'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10,50, short phases, one repeat")
    parser.add_argument("--sizes", help="room sizes, e.g. 50,250")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--log-max-bytes", type=int, metavar="BYTES",
                        help="both sides' log.max_bytes (default: the shipped 10 MiB, so the log rotates "
                             "during the closed loops; 1099511627776 keeps rotation out of the run)")
    parser.add_argument("--saturated-window", type=int, default=16, metavar="K",
                        help="after the other phases, both sides saturated with K messages in flight per "
                             "sender (default 16; 0 skips it)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    s = Settings(sizes=(10, 50, 250))
    if args.quick:
        s = Settings(sizes=(10, 50), open_seconds=1.5, closed_seconds=1.5, warmup=0.5, repeats=1,
                     expected_msg_rate=20000)
    if args.sizes:
        s.sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.repeats:
        s.repeats = args.repeats
    if shutil.which("redis-server") is None:
        print("bench.cluster needs redis-server (Debian: apt-get install redis-server)", file=sys.stderr)
        return 2
    raise_nofile(NOFILE)
    bench_keys.members(max(s.sizes))
    started = time.monotonic()
    result = {"generator": pin_generator(), "servers": relay_pinning()[1], "log_max_bytes": args.log_max_bytes, "runs": []}
    with tempfile.TemporaryDirectory(prefix="securechat-bench-cluster-") as tmp:
        for n in s.sizes:
            log(f"N = {n}: one process vs {args.workers} workers + Redis ...")
            result["runs"].append(asyncio.run(run_size(n, s, args.workers, Path(tmp), args.log_max_bytes,
                                                         args.saturated_window)))
    result["wall_seconds"] = time.monotonic() - started
    result["load_average"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    print(report(result))
    print(f"\n{time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f}; "
          f"ratios: " + ", ".join(f"N={r['n']} {r['cpu_ratio']:.2f} (same rate {r['paced_ratio']:.2f})"
                                  for r in result["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
