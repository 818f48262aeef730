"""`logs dump` logic on real log files: time windows, rows, and following through rotations."""

from __future__ import annotations

from datetime import datetime

import pytest

from securechat.admin.dump import Follower, follow, parse_time, row
from securechat.storage.ciphertext_log import CiphertextLog, LogProblem, LogRecord

NOW = 1_764_097_200.0  # 2025-11-25T19:00:00Z
FP = "3f1a09c2" * 8


def msg(n: int, t: int = 1_764_097_200_000) -> dict:
    return {"event": "msg", "t": t + n, "room": "lobby", "id": f"{n:032x}",
            "from": {"sid": "a" * 32, "username": "alice", "fingerprint": FP},
            "recipients": ["a" * 32, "b" * 32], "ct": "AAAAAAAAAAAAAAAAAAAAAA==", "keys": {}}


@pytest.mark.parametrize("text, expected", [
    ("10m", NOW - 600), ("2h", NOW - 7200), ("1d", NOW - 86400), ("30s", NOW - 30), ("1.5h", NOW - 5400),
    ("2025-11-25T18:00:00Z", NOW - 3600), ("2025-11-25T20:00:00+01:00", NOW),
])
def test_parse_time(text, expected):
    assert parse_time(text, now=NOW) == expected


def test_parse_time_naive_is_local_time():
    expected = datetime(2025, 11, 25, 14, 0).astimezone().timestamp()
    assert parse_time("2025-11-25 14:00", now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "-5m", "2025-13-01", ""])
def test_parse_time_rejects_with_a_hint(text):
    with pytest.raises(ValueError, match="use ISO 8601"):
        parse_time(text, now=NOW)


def test_rows_for_people():
    time, event, sender, fingerprint, to, size, msg_id = row(msg(1))
    assert time == datetime.fromtimestamp(1_764_097_200.001).isoformat(sep=" ", timespec="milliseconds")
    assert (event, sender, fingerprint, to, size, msg_id) == (
        "msg", "alice", "3f1a 09c2 3f1a 09c2", "2", "16", f"{1:032x}")
    join = {"event": "join", "t": 1, "sid": "a" * 32, "username": "bob", "fingerprint": FP}
    assert row(join)[1:] == ("join", "bob", "3f1a 09c2 3f1a 09c2", "-", "-", "-")
    assert row({"event": 5, "t": "x", "from": [], "ct": 3}) == ("-",) * 7  # odd records never raise


def records(items) -> list[int]:
    return [int(i.record["id"], 16) for i in items if isinstance(i, LogRecord)]


def test_follower_reads_history_then_keeps_up_through_rotations(tmp_path):
    log = CiphertextLog(tmp_path, fsync="never", gzip_in_background=False)
    for n in range(3):
        log.append(msg(n))
    log.rotate()
    log.append(msg(3))
    follower = Follower(tmp_path)
    assert records(follower.poll()) == [0, 1, 2, 3]
    assert records(follower.poll()) == []
    log.append(msg(4))
    log.rotate()  # rotated away before the follower saw record 4
    log.append(msg(5))
    assert records(follower.poll()) == [4, 5]
    log.append(msg(6))
    log.rotate()
    log.append(msg(7))
    log.rotate()  # two rotations between polls
    log.append(msg(8))
    assert records(follower.poll()) == [6, 7, 8]
    follower.close()
    log.close()


def test_follower_waits_for_a_torn_line_to_end(tmp_path):
    live = tmp_path / "ciphertext.jsonl"
    live.write_text('{"event": "join", "t": 1}\n{"event": "le')
    follower = Follower(tmp_path)
    assert [i.record["event"] for i in follower.poll()] == ["join"]
    with live.open("a") as fh:
        fh.write('ave", "t": 2}\nnot json\n')
    items = list(follower.poll())
    assert items[0].record["event"] == "leave"
    assert isinstance(items[1], LogProblem) and items[1].line_no == 3 and "invalid JSON" in items[1].reason
    follower.close()


def test_follow_filters_by_time_and_stops_when_told(tmp_path):
    with CiphertextLog(tmp_path, fsync="never") as log:
        for n in range(5):
            log.append(msg(n, t=int(NOW * 1000) + n * 1000))
    polls = []
    items = follow(tmp_path, since=NOW + 1, until=NOW + 4, interval=0,
                   keep_going=lambda: len(polls) < 2, sleep=polls.append)
    assert records(items) == [1, 2, 3]
    assert polls == [0, 0]


def test_follow_of_a_missing_directory_yields_nothing(tmp_path):
    assert list(follow(tmp_path / "nope", keep_going=lambda: False)) == []


def test_rotate_keep_overrides_retention_once(tmp_path):
    with CiphertextLog(tmp_path, fsync="never", keep=5, gzip_in_background=False) as log:
        for n in range(4):
            log.append(msg(n))
            log.rotate()
        assert len(list(tmp_path.glob("*.gz"))) == 4
        assert log.rotate(keep=2) is None  # nothing new, but the smaller keep still applies
        assert len(list(tmp_path.glob("*.gz"))) == 2
        with pytest.raises(ValueError):
            log.rotate(keep=0)
