"""The benchmark machinery in its smallest form: structure and sanity, never timing thresholds."""

from __future__ import annotations

import asyncio
import math
import os
import shutil

import pytest

from bench import report, runner
from bench.runner import Settings, run_all


# Transports the generator closes are finalised by the event loop after asyncio.run returns.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_tiny_benchmark_run_produces_sane_figures(monkeypatch):
    monkeypatch.setenv("BENCH_KEY_CACHE", "off")  # no key file in the home directory from a test
    settings = Settings(
        sizes=(3,), senders=2, rate=20.0, open_seconds=0.5, closed_seconds=0.5, warmup=0.2,
        window=1, idle=(10,), slow_size=3, slow_rate=20.0, slow_seconds=0.5, repeats=1,
        expected_msg_rate=2000.0, pin=False, reference_gc=(10_000, 10, 10),
        # the scenarios in miniature: a log that rotates every 16 KiB, a storm of 12 joins
        rotation_sizes=(3,), rotation_seconds=0.5, rotation_window=4, rotation_log_bytes=16 * 1024,
        storm_size=12, storm_settle=0.2, storm_timeout=20.0,
    )
    results = asyncio.run(run_all(settings))

    assert {r["relay"] for r in results["runs"]} == {"securechat", "reference"}
    for run in results["runs"]:
        assert run["n"] == 3 and run["errors"] == {}
        opened, closed = run["open"], run["closed"]
        assert opened["latency_samples"] > 0 and opened["missing_deliveries"] == 0
        assert 0 < opened["p50_ms"] <= opened["p99_ms"] <= opened["max_ms"]
        assert closed["messages_per_s"] > 0
        # every acknowledged message reaches all 3 members (the sender's echo included)
        assert closed["deliveries_per_s"] > closed["messages_per_s"]
        assert closed["server_cpu_ms_per_msg"] >= 0 and closed["egress_bytes_per_msg"] > 0
        assert closed["rss_mb"] > 0 and run["rss_joined_mb"] > 0
    for slow in results["slow"]:
        assert slow["baseline"]["latency_samples"] > 0 and slow["stalled"]["latency_samples"] > 0
        # every client still reading got every message, in both phases (the stalled one is not
        # waited for: the open loop ends when the readers have theirs)
        assert slow["baseline"]["missing_deliveries"] == 0 and slow["stalled"]["missing_deliveries"] == 0
    for idle in results["idle"]:
        assert idle["open"] == 10 and not math.isnan(idle["kib_per_connection"])

    for run in results["runs"]:
        assert 0 < run["closed"]["p50_ms"] <= run["closed"]["p99_ms"]  # saturated latency too

    # rotation: the closed loop made securechat's log rotate, and the probe saw both loops
    rotation = {r["relay"]: r for r in results["rotation"]}
    assert set(rotation) == {"securechat", "reference"}
    assert rotation["securechat"]["rotations"] >= 1
    for r in rotation.values():
        assert r["messages_per_s"] > 0 and r["lag_samples"] > 0
        assert 0 <= r["lag_p99_ms"] <= r["lag_max_ms"] and r["p50_ms"] <= r["p99_ms"]

    # rotation at a fixed rate: securechat with its log rotating and not; the probe timed each
    # rotation's part on the loop, and every late callback is accounted for by cause or as none
    opened = {r["rotation"]: r for r in results["rotation_open"]}
    assert set(opened) == {"on", "off"}
    assert opened["on"]["rotations"] >= 1 and opened["off"]["rotations"] == 0
    assert opened["on"]["stalls"]["events"]["rotation on the loop"]["count"] >= opened["on"]["rotations"]
    assert "rotation on the loop" not in opened["off"]["stalls"]["events"]
    for r in opened.values():
        assert r["lag_samples"] > 0 and r["missing_deliveries"] == 0 and r["errors"] == {}
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        st = r["stalls"]
        assert st["stalls"] == r["lag_over_10ms"]
        assert st["unexplained"] <= st["stalls"] <= st["unexplained"] + sum(st["by_cause"].values())
    assert rotation["securechat"]["stalls"]["events"]["rotation on the loop"]["count"] >= 1

    # storm: a paced join and a storm on each relay; securechat's clients all end up with the
    # whole room in their roster, nobody was dropped as a stalled reader
    storm = {(r["relay"], r["mode"]): r for r in results["storm"]}
    assert set(storm) == {(k, m) for k in ("securechat", "reference") for m in ("paced", "storm")}
    for r in storm.values():
        assert r["participants"] == 12 and r["complete_clients"] == 12 and r["complete_s"] > 0
        assert r["dropped_4002"] == 0 and r["errors"] == {} and r["lag"]["samples"] > 0
    # securechat's welcomes carry the roster and joined frames follow; the reference sends neither
    assert storm[("securechat", "storm")]["roster_mb"] > 10 * storm[("reference", "storm")]["roster_mb"]

    text = report.markdown(results)
    assert "| securechat | 3 |" in text and "| reference | 3 |" in text
    assert "securechat ÷ reference relay" in text
    assert "securechat's gc thresholds (10000, 10, 10)" in text
    assert "### Rotation during saturation" in text and "### Reconnect storm" in text
    assert "### Rotation at a fixed offered rate" in text and "| on | 3 |" in text and "| off | 3 |" in text



@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_storm_bigger_than_a_room_fills_several_rooms_and_each_client_knows_its_own(monkeypatch):
    """A restart reconnects everyone in every room at once. With rooms of at most 4 (the
    relay's max_participants, from the environment), a storm of 12 fills 3 rooms of 4 by
    default: every client's roster must list exactly the 4 of its own room (a member of another
    room in it would make it 5 or more), in the paced join and in the storm. Into one room, 8 of
    the 12 would be refused (room_full) and the run would not be complete."""
    from bench import runner, scenarios

    monkeypatch.setenv("BENCH_KEY_CACHE", "off")
    monkeypatch.setitem(runner.BENCH_ENV, "SECURECHAT_MAX_PARTICIPANTS", "4")
    assert scenarios.storm_layout(12) == [("lobby", 4), ("storm-1", 4), ("storm-2", 4)]
    assert scenarios.storm_layout(1000, cap=256) == [("lobby", 250), ("storm-1", 250), ("storm-2", 250),
                                                     ("storm-3", 250)]
    assert [n for _, n in scenarios.storm_layout(10, 3)] == [4, 3, 3]
    assert scenarios.storm_layout(256, cap=256) == [("lobby", 256)]
    settings = Settings(sizes=(), idle=(), slow_size=0, repeats=1, pin=False, scenarios=("storm",),
                        storm_size=12, storm_settle=0.2, storm_timeout=20.0)
    results = asyncio.run(run_all(settings))

    storm = {(r["relay"], r["mode"]): r for r in results["storm"]}
    assert set(storm) == {(k, m) for k in ("securechat", "reference") for m in ("paced", "storm")}
    for r in storm.values():
        assert r["rooms"] == [4, 4, 4] and r["room_names"] == ["lobby", "storm-1", "storm-2"]
        assert r["complete_s"] > 0 and r["complete_clients"] == 12
        assert r["refused"] == 0 and r["errors"] == {} and r["connect_failed"] == 0 and r["dropped_4002"] == 0
    for mode in ("paced", "storm"):
        r = storm[("securechat", mode)]
        assert r["wrong_rosters"] == 0
        assert r["known"] == [4] * 12 and r["room_of"] == [0] * 4 + [1] * 4 + [2] * 4
    text = report.markdown(results)
    assert "| securechat | storm 12 | 3 rooms of 4 |" in text and "(welcomes only)" in text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_refused_storm_joins_are_reported_not_passed(monkeypatch):
    """Rooms of 6 where the relay allows 4: 2 joins per room are refused. The run must end
    (without waiting for its deadline), count the refusals by code and not report a time."""
    from bench import runner

    monkeypatch.setenv("BENCH_KEY_CACHE", "off")
    monkeypatch.setitem(runner.BENCH_ENV, "SECURECHAT_MAX_PARTICIPANTS", "4")
    settings = Settings(sizes=(), idle=(), slow_size=0, repeats=1, pin=False, scenarios=("storm",),
                        relays=("securechat",), storm_size=12, storm_rooms=2, storm_settle=0.2,
                        storm_timeout=60.0)
    results = asyncio.run(run_all(settings))

    for r in results["storm"]:
        assert r["rooms"] == [6, 6]
        assert r["errors"] == {"room_full": 4} and r["refused"] == 4
        assert r["complete_s"] is None and r["settled_s"] is not None and r["settled_s"] < 60.0
        assert r["complete_clients"] == 8 and r["wrong_rosters"] == 0
        assert sorted(r["known"]) == [0] * 4 + [4] * 8  # the refused know nobody, the others their 4
    text = report.markdown(results)
    assert text.count("**not complete**: 4 of 12 refused or never connected") == 2
    assert "| room_full 4 |" in text

def test_cpu_ratio_shows_the_spread_of_back_to_back_pairs():
    def run(relay, cpus):
        closed = [{"server_cpu_ms_per_msg": c, "messages_per_s": 1.0, "egress_bytes_per_msg": 1.0}
                  for c in cpus]
        middle = sorted(cpus)[len(cpus) // 2]
        return {"relay": relay, "n": 50, "closed": dict(closed[0], server_cpu_ms_per_msg=middle),
                "closed_repeats": closed, "open": {"p50_ms": 1.0, "p99_ms": 2.0}}

    results = {"runs": [run("securechat", [3.0, 2.4, 3.3]), run("reference", [2.5, 2.0, 3.0])]}
    (row,) = report.ratios(results)
    assert row["cpu"] == pytest.approx(3.0 / 2.5)
    assert row["cpu_range"] == pytest.approx((1.1, 1.2))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_transport_mode_measures_both_transports_in_one_run():
    settings = Settings(
        sizes=(3,), senders=2, rate=20.0, open_seconds=0.5, closed_seconds=0.5, warmup=0.2,
        window=1, idle=(), slow_size=0, repeats=1, expected_msg_rate=2000.0, pin=False, transports=True,
        scenarios=(),
    )
    results = asyncio.run(run_all(settings))

    assert results["runs"] == []
    assert {r["transport"] for r in results["transports"]} == {"websocket", "http"}
    for run in results["transports"]:
        assert run["n"] == 3 and run["errors"] == {} and run["http_errors"] == {}
        opened, closed = run["open"], run["closed"]
        assert opened["latency_samples"] > 0 and opened["missing_deliveries"] == 0
        assert closed["deliveries_per_s"] > closed["messages_per_s"] > 0
        assert closed["server_cpu_us_per_delivery"] >= 0
    text = report.markdown(results)
    assert "| websocket | 3 |" in text and "| http | 3 |" in text
    assert "HTTP fallback ÷ WebSocket" in text


def test_the_reconnect_bench_brings_both_pages_back_and_reports_each_interval():
    """bench.reconnect in its smallest form (one run, real Chromium, real serve): every interval
    is measured, the fallback page stays on the fallback, and the table names each row."""
    from bench import reconnect

    result = reconnect.run(repeats=1)
    (run,) = result["runs"]
    for key in ("join_ws", "join_http", "cut_ws", "cut_http", "restart_ws", "restart_http"):
        assert 0 < run[key] < 60_000, key
    text = reconnect.markdown(result)
    for row in ("| join |", "| every connection cut |", "| server restart |"):
        assert row in text


def test_the_attachment_benchmark_runs_and_reports(capsys, tmp_path):
    from bench import attachments

    out = tmp_path / "attachments.json"
    assert attachments.main(["--mib", "1", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| upload (encrypt + 1 MiB parts), MiB/s |" in text and "server RSS:" in text
    assert "| upload of the blob alone (no encryption), MiB/s |" in text
    import json

    (run,) = json.loads(out.read_text())["runs"]
    assert run["upload_s"] > 0 and run["upload_blob_s"] > 0
    assert run["rss_peak"] >= run["rss_before"] > 0 and run["chat_during_ms"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_building_the_frames_of_a_phase_keeps_answering_the_relays_pings(monkeypatch):
    """A phase's frames are built before it starts, and on a loaded machine (or at N = 250, ~25 ms
    a frame) that takes longer than the relay's ping timeout. Built without returning to the
    loop, no client answered a ping meanwhile and the relay closed every one of them: the closed
    loop then measured 0 msgs/s. Here a build costs 40 ms and securechat pings every second with
    a 1 s timeout, so ~3 s of frames outlast several pings; every client must still be open and
    the closed loop must have acks."""
    import time as _time

    from bench import runner

    real_build = runner.FrameFactory.build

    def slow_build(self):
        _time.sleep(0.04)  # a frame to 250 on a busy core
        return real_build(self)

    monkeypatch.setenv("BENCH_KEY_CACHE", "off")
    monkeypatch.setattr(runner.FrameFactory, "build", slow_build)
    monkeypatch.setitem(runner.BENCH_ENV, "SECURECHAT_PING_INTERVAL", "1")
    monkeypatch.setitem(runner.BENCH_ENV, "SECURECHAT_PING_TIMEOUT", "1")
    # 2 senders x ~40 frames x 40 ms: the closed loop's pool takes ~3 s to build
    settings = Settings(
        sizes=(3,), senders=2, rate=20.0, open_seconds=0.5, closed_seconds=0.5, warmup=0.2, window=1,
        idle=(), slow_size=0, repeats=1, expected_msg_rate=140.0, pin=False, relays=("securechat",),
        scenarios=(),
        # the slow build in this process (a process pool would not see the patch), pools as guessed
        build_workers=0, calibrate=False,
    )
    results = asyncio.run(run_all(settings))

    (run,) = results["runs"]
    assert run["errors"] == {}
    assert run["closed"]["clients_closed"] == 0
    assert run["closed"]["messages_per_s"] > 0
    assert run["open"]["missing_deliveries"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_saturated_phases_send_only_prebuilt_frames_even_when_the_rate_guess_is_far_too_low(monkeypatch):
    """The closed loop's pools were sized from a guess (expected_msg_rate): a relay faster than
    it emptied them, the generator built frames during the measured window (N RSA wraps each, on
    its one core) and msgs/s and saturated p99 measured the generator. Here the guess is ~100x
    too low: the pools must still cover every phase (calibrated on the relays, built in worker
    processes), and the report must say so per relay."""
    monkeypatch.setenv("BENCH_KEY_CACHE", "off")
    settings = Settings(
        sizes=(3,), senders=2, rate=20.0, open_seconds=0.3, closed_seconds=0.5, warmup=0.2, window=4,
        idle=(), slow_size=0, repeats=1, expected_msg_rate=30.0, pin=False, scenarios=(),
    )
    results = asyncio.run(run_all(settings))

    assert {r["relay"] for r in results["runs"]} == {"securechat", "reference"}
    for run in results["runs"]:
        closed = run["closed"]
        assert closed["messages_per_s"] > 10 * 30.0 / 3  # far above the guess: the guess was wrong
        assert closed["built_live"] == 0, run["relay"]
        assert closed["clients_closed"] == 0 and run["errors"] == {}
    text = report.markdown(results)
    assert "frames built live" in text
    assert text.count("| 0 (valid) |") == 2
    (row,) = report.ratios(results)
    assert row["saturated_valid"] and row["saturated_p99"] is not None


def test_a_phase_that_built_frames_live_is_reported_as_not_valid():
    def run(relay, live):
        closed = {"server_cpu_ms_per_msg": 1.0, "messages_per_s": 100.0, "deliveries_per_s": 300.0,
                  "egress_bytes_per_msg": 1.0, "p99_ms": 5.0, "rss_mb": 1.0, "built_live": live,
                  "generator_cpu_util": 0.5}
        return {"relay": relay, "n": 10, "closed": closed, "closed_repeats": [closed], "rss_joined_mb": 1.0,
                "open": {"p50_ms": 1.0, "p99_ms": 2.0}}

    results = {"settings": Settings(idle=(), slow_size=0, scenarios=()).__dict__, "generator": "core 1",
               "runs": [run("securechat", 4663), run("reference", 0)]}
    (row,) = report.ratios(results)
    assert not row["saturated_valid"] and row["saturated_p99"] is None
    text = report.markdown(results)
    assert "| 4,663 (**not valid**: 4,663 built live) |" in text and "| 0 (valid) |" in text
    assert "| not valid (frames built live) |" in text


def test_the_lag_probe_names_what_overlapped_each_late_callback():
    from bench import probe

    # (fired at, lateness, CPU wait and CPU time since the previous callback) and
    # (start, seconds, kind); each stall is also put where the loop's thread spent it
    timed = [
        (1.000, 0.001, 0.0, 0.001),     # on time
        (2.030, 0.025, 0.0, 0.026),     # stall 2.005-2.030: a 20 ms gen-2 collection, the loop ran
        (3.050, 0.040, 0.030, 0.005),   # stall 3.010-3.050: the thread waited 30 ms for a CPU
        (4.020, 0.015, 0.0, 0.001),     # stall 4.005-4.020: asleep while a background gzip ran
        (5.020, 0.015, 0.0, 0.016),     # stall: nothing overlapped it, the loop ran its own code
        (6.020, 0.015, 0.0, 0.016),     # stall: only a 0.2 ms append overlapped it (too short to count)
        (7.020, 0.015, 0.0, 0.016),     # stall: the loop ran, a rotation job alongside: not the log's
        (8.030, 0.025, 0.0, 0.026),     # stall: a 12 ms fsync on the loop inside it
    ]
    events = [(2.008, 0.020, 2), (3.9, 0.3, 30), (6.010, 0.0002, 22), (6.9, 0.2, 30), (8.01, 0.012, 21),
              (9.0, 0.002, 20)]
    result = probe.attribute(timed, events)
    assert result["stalls"] == 7 and result["unexplained"] == 3  # no event overlapped 3.0, 5.0, 6.0
    assert result["by_cause"] == {"gc gen 2": 1, probe.NO_CPU: 1, "rotation job (background)": 2,
                                  probe.RAN: 5, probe.ASLEEP: 1, "fsync on the loop": 1}
    # the log's: the gzip while the loop slept, and the fsync on the loop (the longest, 25 ms)
    assert result["from_log"] == 2 and result["from_log_max_ms"] == pytest.approx(25.0)
    assert result["events"]["gc gen 2"] == {"count": 1, "max_ms": pytest.approx(20.0), "total_ms": pytest.approx(20.0)}
    assert result["events"]["rotation on the loop"]["count"] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_frames_built_live_are_counted_per_phase_not_since_the_room_began(monkeypatch, tmp_path):
    """A repeat whose pool ran dry must not make every later phase of that room look dry too
    (nor make saturated_repeat run a good repeat again)."""
    from bench import keys, runner

    monkeypatch.setenv("BENCH_KEY_CACHE", "off")

    async def main():
        relay = runner.start_relay("reference", tmp_path)
        builder = runner.FrameBuilder(2)
        room = runner.Room(relay, keys.members(3), 2, 200)
        try:
            await room.join_all()
            await builder.fill(room.factories, 3000)
            for factory in room.factories:
                factory.built_live = 7  # an earlier phase of this room ran dry
            return await runner.closed_loop(room, 0.3, 0.1, 1, settle=0.2)
        finally:
            room.close()
            builder.close()
            await asyncio.sleep(0.1)
            relay.stop()

    result = asyncio.run(main())
    assert result["messages_per_s"] > 0 and result["built_live"] == 0

def test_idle_memory_is_compared_by_the_median_of_each_relay_per_connection_count():
    from bench.report import idle_ratios, markdown

    def run(relay, count, kib):
        return {"relay": relay, "connections": count, "open": count, "rss_base_mb": 30.0,
                "rss_mb": 30.0 + kib * count / 1024, "kib_per_connection": kib}

    idle = [run("securechat", 1000, 18.0), run("reference", 1000, 16.0), run("reference", 1000, 15.0),
            run("securechat", 1000, 30.0), run("securechat", 1000, 17.0), run("reference", 1000, 15.5),
            run("securechat", 5000, 20.0)]  # no reference at 5,000: no ratio
    assert idle_ratios(idle) == {1000: 18.0 / 15.5}
    settings = Settings(sizes=(), idle=(1000, 5000), slow_size=0, repeats=3)
    text = markdown({"settings": settings.__dict__.copy(), "generator": "unpinned", "runs": [], "idle": idle,
                     "slow": [], "rotation": [], "storm": []})
    assert "| 1,000 | 1.16× |" in text and "Throughput" not in text


def test_the_relay_runs_on_a_core_of_its_own_not_on_the_generators(tmp_path):
    # A relay started after pin_generator() used to inherit the generator's one core (its
    # affinity) and share it, while the other core stayed idle.
    if len(runner.ALL_CPUS) < 2 or shutil.which("taskset") is None:
        pytest.skip("needs two cores and taskset")
    before = os.sched_getaffinity(0)
    try:
        runner.pin_generator()
        relay = runner.start_relay("reference", tmp_path)
        try:
            assert os.sched_getaffinity(0) == {runner.ALL_CPUS[1]}
            assert os.sched_getaffinity(relay.proc.pid) == {runner.ALL_CPUS[0]}
            assert relay.pinned == f"core {runner.ALL_CPUS[0]}"
        finally:
            relay.stop()
    finally:
        os.sched_setaffinity(0, before)
